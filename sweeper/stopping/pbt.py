"""Population-based training's exploit decision, as a stopping rule.

Each time a member's trial has logged ``perturbation_interval`` more values of the metric, the
trial is ranked against the population: the latest value of every other member (over all of that
member's trials) logged before the trial's own value at that iteration. In the bottom
``quantile`` it stops, and its reason names the top-``quantile`` member it copies; the strategy
(:mod:`sweeper.strategies.pbt`) then restarts the slot from that member's checkpoint with its
configuration explored. Only what was stored before each checkpoint iteration counts, so a
restarted coordinator repeats every decision. A donor is always one of its member's newest
``STANDING_TRIALS`` trials with a value: an older trial, which can rank at a point in time judged
late (an agent's clock behind the others', points sent after an outage), is passed over, so the
checkpoints of older ones can go (:mod:`sweeper.checkpoints.retention`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sweeper.spec.model import Metric, Pbt
from sweeper.stopping.base import StopDecision, StoppingRule, TrialCurve, rank_of
from sweeper.trials import TrialState

_EXPLOIT = re.compile(r"^pbt: exploit trial (\d+) ")
#: Of each member's trials with a finite value of the metric, how many newest ones may be donors.
STANDING_TRIALS = 2


def exploited_trial(reason: str | None) -> int | None:
    """The number of the trial a stop decision copies, when the decision is an exploit."""
    match = _EXPLOIT.match(reason or "")
    return int(match.group(1)) if match else None


def standing_trials(trials: Sequence[TrialCurve]) -> set[int]:
    """Numbers of the trials that may be donors: of each member's trials with a finite value, the
    newest ``STANDING_TRIALS``."""
    by_member: dict[int, list[int]] = {}
    for curve in trials:
        if curve.trial is not None and curve.trial.member is not None and curve.iterations():
            by_member.setdefault(curve.trial.member, []).append(curve.number)
    return {n for numbers in by_member.values() for n in sorted(numbers)[-STANDING_TRIALS:]}


def quantile_count(members: int, quantile: float) -> int:
    """How many members form the bottom (and the top) quantile: ceil(n * q), at most half of n."""
    return min(math.ceil(members * quantile - 1e-9), members // 2)


@dataclass(frozen=True)
class ExploitDecision(StopDecision):
    member: int = 0
    donor_member: int = 0
    donor_trial: int = 0
    donor_value: float = math.nan
    donor_rank: int = 0


@dataclass(frozen=True)
class _Standing:
    loss: float
    member: int
    trial: int
    value: float


class PbtRule(StoppingRule):
    name = "pbt"

    def __init__(self, metric: Metric, config: Pbt, seed: int = 0) -> None:
        super().__init__(metric)
        self.config = config
        self.seed = seed

    def decide(self, trial: TrialCurve, trials: Sequence[TrialCurve]) -> StopDecision | None:
        record = trial.trial
        if record is None or record.member is None:
            return None
        mine = trial.iterations()
        others = [
            t
            for t in trials
            if t.number != trial.number and t.trial is not None and t.trial.member is not None
        ]
        donors = standing_trials(trials)
        interval = self.config.perturbation_interval
        for level in range(interval, len(mine) + 1, interval):
            decision = self._decide_at(trial, record.member, level, others, donors)
            if decision is not None:
                return decision
        return None

    def _decide_at(
        self,
        trial: TrialCurve,
        member: int,
        level: int,
        others: Sequence[TrialCurve],
        donors: set[int],
    ) -> ExploitDecision | None:
        point = trial.iterations()[level - 1]
        when = (point.time, trial.number)
        latest: dict[int, tuple[tuple[float, int, int], _Standing]] = {}
        for other in others:
            assert other.trial is not None and other.trial.member is not None
            if other.trial.member == member:
                continue  # the member is judged by this trial alone
            for p in other.iterations():
                if (p.time, other.number) >= when:
                    continue
                key = (p.time, other.number, p.seq)
                found = latest.get(other.trial.member)
                if found is None or key > found[0]:
                    standing = _Standing(self.loss(p.value), other.trial.member, other.number, p.value)
                    latest[other.trial.member] = (key, standing)
        standings = sorted(
            [_Standing(self.loss(point.value), member, trial.number, point.value)]
            + [s for _, s in latest.values()],
            key=lambda s: (s.loss, s.member),
        )
        n = len(standings)
        k = quantile_count(n, self.config.quantile)
        position = next(i for i, s in enumerate(standings) if s.member == member)
        if k == 0 or position < n - k:
            return None
        rng = random.Random(f"{self.seed}:pbt:{trial.number}:{level}")
        # Not a trial whose member has moved on: its checkpoint may be gone. Nor one that has
        # finished: its checkpoint is its last epoch's, with nothing left to train, and the strategy
        # would not restart the member from it. (A stop already decided stays decided; this
        # only keeps the rule from stopping a member for nothing.)
        done = {o.number for o in others if o.trial is not None and o.trial.state is TrialState.FINISHED}
        eligible = [s for s in standings[:k] if s.trial in donors and s.trial not in done]
        if not eligible:
            return None
        donor = eligible[rng.randrange(len(eligible))]
        losses = [s.loss for s in standings]
        rank, donor_rank = rank_of(losses[position], losses), rank_of(donor.loss, losses)
        name = self.metric.name
        reason = (
            f"pbt: exploit trial {donor.trial} (member {donor.member}, {name}={donor.value:.4g}, "
            f"rank {donor_rank} of {n}): at iteration {level} member {member} {name}={point.value:.4g} "
            f"ranks {rank} of {n}, in the bottom {self.config.quantile:.0%}"
        )
        return ExploitDecision(
            reason=reason,
            rule=self.name,
            iteration=level,
            rung=level // self.config.perturbation_interval,
            value=point.value,
            threshold=standings[n - k - 1].value,
            rank=rank,
            competitors=n,
            member=member,
            donor_member=donor.member,
            donor_trial=donor.trial,
            donor_value=donor.value,
            donor_rank=donor_rank,
        )
