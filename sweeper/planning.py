"""What a sweep runs next, from its spec and trial history alone.

Pure functions: the coordinator calls them inside the store's per-sweep transaction, and
again when a trial ends to find out whether the sweep is complete. Rules that hold for every
method (run_cap, metric target, retrying failed configurations) live here so strategies only
decide what is new.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sweeper.protocol import is_interrupted
from sweeper.spec import SweepSpec
from sweeper.store.base import TrialDraft
from sweeper.strategies import Strategy, Suggestion, SuggestionKind
from sweeper.trials import Trial, TrialState, count_states

_RETRYABLE = frozenset({TrialState.FAILED, TrialState.LOST})


@dataclass(frozen=True)
class Plan:
    """Either a trial to create, or why there is none (``suggestion`` of kind WAIT or DONE)."""

    draft: TrialDraft | None = None
    suggestion: Suggestion | None = None

    @property
    def done(self) -> bool:
        return self.suggestion is not None and self.suggestion.kind is SuggestionKind.DONE

    @property
    def reason(self) -> str:
        return self.suggestion.reason if self.suggestion else ""


def suggestion_rng(seed: int, trials: Sequence[Trial]) -> random.Random:
    """The same seed and the same history give the same suggestion, also after a restart."""
    return random.Random(f"{seed}:{len(trials)}")


def may_run_again(trials: Sequence[Trial], max_retries: int, since: float = -math.inf) -> list[Trial]:
    """The last attempt of each configuration that is to run again, oldest first: every attempt
    failed or was lost, with retries left, and the last was not asked to stop (it was early
    terminated, or a population member was replaced, before it failed or went silent).

    Only attempts made ``since`` (when the sweep was last resumed) use up retries: a script that
    was broken fails every configuration in turn, and once it is fixed and the sweep resumed,
    the configurations it failed run again."""
    states = count_states(trials)
    if not any(states.get(state) for state in _RETRYABLE):
        return []  # the common case, answered without a key for every trial
    # A population member's attempts are its own: two members may hold the same configuration.
    attempts: dict[tuple[str, int | None], list[Trial]] = {}
    for trial in trials:
        attempts.setdefault((trial.config_key, trial.member), []).append(trial)
    again = []
    for tries in attempts.values():
        # A trial cut short because its agent was told to stop is no attempt: it runs again
        # however often that happens (a preempted machine, docker stop).
        counted = [t for t in tries if not _interrupted(t) and t.created_at >= since]
        if all(t.state in _RETRYABLE for t in tries) and len(counted) <= max_retries:
            last = max(tries, key=lambda t: t.number)
            if last.stop_requested is None:
                again.append(last)
    return again


def _interrupted(trial: Trial) -> bool:
    return trial.state is TrialState.LOST and is_interrupted(trial.stop_reason)


def find_retry(
    trials: Sequence[Trial], max_retries: int, asking: str | None = None, since: float = -math.inf
) -> TrialDraft | None:
    """The oldest configuration to run again (:func:`may_run_again`), as a new trial for the agent
    named ``asking``. A configuration that failed on that agent waits for another while another
    agent runs trials of the sweep: the agent of a broken GPU, which asks again first, would
    otherwise use up the configuration's retries on that GPU."""

    def at_work_elsewhere() -> bool:  # a look at every trial: only for a retry that failed here
        return any(t.state is TrialState.RUNNING and t.agent != asking for t in trials)

    for last in may_run_again(trials, max_retries, since):
        if (
            asking is not None
            and last.state is TrialState.FAILED
            and last.agent == asking
            and at_work_elsewhere()
        ):
            continue
        return TrialDraft(
            config=last.config, retry_of=last.number, member=last.member, restore_from=last.restore_from
        )
    return None


def no_result_said(spec: SweepSpec, sweep_id: str, trials: Sequence[Trial]) -> str | None:
    """What to tell people of the configurations of a complete sweep without a result, which a
    resume runs again (:func:`without_result`); None when there are none."""
    missing = len(without_result(spec, trials))
    if not missing:
        return None
    which = "1 configuration has" if missing == 1 else f"{missing} configurations have"
    return f"{which} no result: fix what failed, then 'sweeper resume {sweep_id}' and an agent run them again"


def without_result(spec: SweepSpec, trials: Sequence[Trial]) -> list[Trial]:
    """The last attempt of each configuration that has no result (every attempt failed or was
    lost), which a resume of the sweep runs again; none once the metric target was reached, which
    ends the sweep whatever else would run."""
    if target_reached_by(spec, trials) is not None:
        return []
    return may_run_again(trials, spec.options.max_retries, since=math.inf)


def target_reached_by(spec: SweepSpec, trials: Sequence[Trial]) -> Trial | None:
    metric = spec.metric
    if metric is None or metric.target is None:
        return None
    for trial in trials:
        value = trial.metric(metric.name)
        if trial.state is TrialState.FINISHED and value is not None and metric.reached_target(value):
            return trial
    return None


def _target_reached(spec: SweepSpec, trials: Sequence[Trial]) -> str | None:
    """Why the sweep ends whatever else would run: its metric target was reached."""
    if (hit := target_reached_by(spec, trials)) is not None:
        return f"trial {hit.number} reached the metric target"
    return None


def _capped(spec: SweepSpec, trials: Sequence[Trial]) -> str | None:
    """Why no new configuration starts: ``run_cap`` of them have. Retries do not count, and still
    run after the cap: a configuration a preempted machine or a broken GPU cut short is not a
    result, and the cap would otherwise end the sweep with fewer results than it allows."""
    cap = spec.run_cap  # len(trials) first: counting the retries walks every trial, on every lease
    if cap is not None and len(trials) >= cap and sum(t.retry_of is None for t in trials) >= cap:
        return f"run_cap of {spec.run_cap} trials reached"
    return None


def completion(
    spec: SweepSpec, strategy: Strategy, trials: Sequence[Trial], seed: int, since: float = -math.inf
) -> str | None:
    """Why the sweep is complete, or None: what ``plan_next(...).done`` says, without asking the
    strategy for a suggestion nobody runs (for bayes, a model fit per trial that ends)."""
    if (reason := _target_reached(spec, trials)) is not None:
        return reason
    if count_states(trials).get(TrialState.RUNNING) or may_run_again(trials, spec.options.max_retries, since):
        return None  # a running trial may still fail and need a retry
    return _capped(spec, trials) or strategy.completion(trials, suggestion_rng(seed, trials))


def plan_next(
    spec: SweepSpec,
    strategy: Strategy,
    trials: Sequence[Trial],
    seed: int,
    asking: str | None = None,
    since: float = -math.inf,
) -> Plan:
    """What the agent named ``asking`` (None: any) runs next; ``since``: see :func:`may_run_again`."""

    def finished_or_wait(reason: str) -> Plan:
        # Running trials may still fail and need a retry, so agents wait rather than leave.
        active = count_states(trials).get(TrialState.RUNNING, 0)
        if active:
            return Plan(suggestion=Suggestion.wait(f"{reason}; waiting for {active} running trial(s)"))
        return Plan(suggestion=Suggestion.done(reason))

    if (reason := _target_reached(spec, trials)) is not None:
        return Plan(suggestion=Suggestion.done(reason))
    if (retry := find_retry(trials, spec.options.max_retries, asking, since)) is not None:
        return Plan(draft=retry)
    if (reason := _capped(spec, trials)) is not None:
        return finished_or_wait(reason)
    suggestion = strategy.suggest(trials, suggestion_rng(seed, trials))
    if suggestion.kind is SuggestionKind.RUN:
        assert suggestion.config is not None  # a RUN suggestion always carries a config
        draft = TrialDraft(
            config=suggestion.config, member=suggestion.member, restore_from=suggestion.restore_from
        )
        return Plan(draft=draft)
    if suggestion.kind is SuggestionKind.DONE:
        return finished_or_wait(suggestion.reason)
    return Plan(suggestion=suggestion)
