"""Asynchronous successive halving (ASHA) as a stopping rule, and its bracketed form.

At each rung (an iteration count), a trial goes on only when its value there is in the top
``1/eta`` of the values that the trials at the rung had there, itself included (at least one
trial always goes on). A trial is judged at a rung on every report until it reaches its next
rung, each time against every trial that has reached the rung so far; once it has moved on, the
rung counts the trials that reached it before that, by the time their value there was logged,
then by trial number. So a trial that passed a rung early, among few rivals, is stopped as soon
as the trials arriving there behind it push it out of the top ``1/eta``, instead of running to
the next rung on a weak comparison: with one worker nothing arrives behind it and it is plain
ASHA; with many it is what makes their decisions as informed as one worker's. Each decision
depends only on what was stored when it was made, so a restarted coordinator repeats it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sweeper.spec.model import Asha, Metric, Resource
from sweeper.stopping.base import StopDecision, StoppingRule, TrialCurve, rank_of
from sweeper.stopping.brackets import BracketSchedule
from sweeper.stopping.rungs import promotion_count, rung_levels


class SuccessiveHalving:
    """The rung check shared by ``AshaRule`` and ``BracketedAshaRule``."""

    def __init__(self, rule: StoppingRule, eta: float, label: str) -> None:
        self.rule = rule
        self.eta = eta
        self.label = label

    def check(
        self, trial: TrialCurve, rivals: Sequence[TrialCurve], rungs: Sequence[int]
    ) -> StopDecision | None:
        mine = trial.iterations()
        others = [(t.number, t.iterations()) for t in rivals if t.number != trial.number]
        reached = [level for level in rungs if level <= len(mine)]
        for index, level in enumerate(reached):
            point = mine[level - 1]
            # The rung counts rivals until the trial reaches its next rung (None: not yet).
            moved_on = None
            if index + 1 < len(reached):
                moved_on = (mine[reached[index + 1] - 1].time, trial.number)
            losses = [self.rule.loss(point.value)]
            for number, points in others:
                if len(points) >= level and (moved_on is None or (points[level - 1].time, number) < moved_on):
                    losses.append(self.rule.loss(points[level - 1].value))
            keep = promotion_count(len(losses), self.eta)
            bar = sorted(losses)[keep - 1]
            rank = rank_of(losses[0], losses)
            if rank > keep:
                return self.rule.describe(
                    label=self.label,
                    iteration=level,
                    rung=index + 1,
                    value=point.value,
                    threshold=self.rule.loss(bar),
                    rank=rank,
                    competitors=len(losses),
                    eta=self.eta,
                )
        return None


class AshaRule(StoppingRule):
    """``early_terminate: {type: asha, min_iter, eta, max_iter}``."""

    name = "asha"

    def __init__(self, metric: Metric, config: Asha) -> None:
        super().__init__(metric)
        self.config = config
        self.rungs = rung_levels(config.min_iter, config.eta, config.max_iter)
        self._halving = SuccessiveHalving(self, config.eta, "asha")

    def decide(self, trial: TrialCurve, trials: Sequence[TrialCurve]) -> StopDecision | None:
        return self._halving.check(trial, trials, self.rungs)


class BracketedAshaRule(StoppingRule):
    """Asynchronous Hyperband: brackets of ASHA over a resource, for methods hyperband and bohb.

    Bracket ``b`` starts its rungs at ``min * eta**b``; a trial's bracket follows from its number
    (see :class:`BracketSchedule`) and it competes only with trials of its own bracket.
    """

    name = "hyperband"

    def __init__(self, metric: Metric, resource: Resource) -> None:
        super().__init__(metric)
        self.resource = resource
        self.schedule = BracketSchedule(resource)
        self._halving = {
            b: SuccessiveHalving(self, resource.eta, f"hyperband bracket {b}")
            for b in range(self.schedule.count)
        }

    def decide(self, trial: TrialCurve, trials: Sequence[TrialCurve]) -> StopDecision | None:
        bracket = self.schedule.bracket_of(trial.number)
        same: Callable[[TrialCurve], bool] = lambda t: self.schedule.bracket_of(t.number) == bracket  # noqa: E731
        rivals = [t for t in trials if same(t)]
        return self._halving[bracket].check(trial, rivals, self.schedule.rungs(bracket))
