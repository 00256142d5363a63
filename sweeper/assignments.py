"""What an agent is told with the trial it leased: the trial's configuration and command, and
the checkpoints it starts from, publishes to and may discard."""

from __future__ import annotations

from collections.abc import Sequence

from sweeper.checkpoints import checkpoint_location
from sweeper.checkpoints.retention import resume_points
from sweeper.checkpoints.retention import unneeded_checkpoints as unrestorable
from sweeper.planning import may_run_again
from sweeper.protocol import Assignment
from sweeper.results import best_of
from sweeper.spec import SweepSpec
from sweeper.spec.integrations import tracker_settings
from sweeper.spec.model import DEFAULT_CHECKPOINTS, Pbt
from sweeper.trials import Trial


def assignment(
    spec: SweepSpec,
    trial: Trial,
    lease_id: str,
    lease_seconds: float,
    history: Sequence[Trial],
    discard: Sequence[str],
) -> Assignment:
    """``trial`` leased under ``lease_id``, as its agent gets it; ``history``: the sweep's
    trials, which a retry's checkpoints to resume from are found in."""
    return Assignment(
        sweep_id=trial.sweep_id,
        trial_id=trial.id,
        trial_number=trial.number,
        lease_id=lease_id,
        lease_seconds=lease_seconds,
        config=trial.config,
        command=spec.command,
        program=spec.program,
        metric_name=spec.metric.name if spec.metric else None,
        integrations=tracker_settings(spec),
        restore_from=trial.restore_from,
        retry_of=trial.retry_of,
        resume_from=_resume_from(spec, history, trial),
        checkpoint_to=_checkpoint_to(spec, trial),
        discard_checkpoints=tuple(discard),
        project=spec.project,
        entity=spec.entity,
        time_limit=spec.options.trial_timeout,
        stall_limit=spec.options.stall_timeout,
    )


def _checkpoint_root(spec: SweepSpec) -> str | None:
    """Where the trials of a sweep that keeps checkpoints (method pbt) publish them; else None."""
    if spec.options.pbt is None and spec.method != "pbt":
        return None
    return spec.options.pbt.checkpoints if spec.options.pbt is not None else DEFAULT_CHECKPOINTS


def _checkpoint_to(spec: SweepSpec, trial: Trial) -> str | None:
    """Where ``trial`` publishes its checkpoint folder, in a sweep that keeps checkpoints."""
    root = _checkpoint_root(spec)
    return None if root is None else checkpoint_location(root, trial.sweep_id, trial.number)


def _resume_from(spec: SweepSpec, trials: Sequence[Trial], trial: Trial) -> tuple[str, ...]:
    """The checkpoints that the lost attempts ``trial`` retries published, newest first."""
    root = _checkpoint_root(spec)
    if root is None or trial.retry_of is None:
        return ()
    return tuple(resume_points(root, {t.number: t for t in trials}, trial.retry_of))


def unneeded_checkpoints(spec: SweepSpec, trials: Sequence[Trial], since: float) -> list[str]:
    """The sweep's published checkpoints that nothing can restore from any more (method pbt).
    Kept besides: those that trials to run again start from (a new lease's trial among them:
    a retry starts from one of those, an exploit from a donor the history keeps), and the best
    trial's, which people look for when the sweep is done."""
    pbt = spec.options.pbt or Pbt()
    if spec.method != "pbt" or pbt.keep_checkpoints == "all" or spec.metric is None:
        return []
    again = may_run_again(trials, spec.options.max_retries, since)
    needed = {t.restore_from for t in again if t.restore_from}
    if again:  # and what their retries resume from
        by_number = {t.number: t for t in trials}
        for trial in again:
            needed.update(resume_points(pbt.checkpoints, by_number, trial.number))
    if (best := best_of(spec, trials)) is not None:
        needed.add(checkpoint_location(pbt.checkpoints, best.sweep_id, best.number))
    return unrestorable(trials, pbt.checkpoints, spec.metric.name, needed=needed)
