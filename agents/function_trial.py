"""Running one trial as a call of a Python function in the agent's thread (``sweeper.agent(function=...)``).

The function reads its config through ``sweeper.init()``, which finds the trial's context; its
``run.log`` records reach the coordinator through that context, and a stop reaches the function as
:class:`~sweeper.run.TrialStopped` from its next ``run.log``.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

from sweeper.agents.events import TrialStarted
from sweeper.agents.trialrun import STDERR_TAIL_LINES, AbandonTrial, LeaseKeeper, TrialRun

from sweeper import _context
from sweeper import run as run_api
from sweeper.protocol import TrialOutcome
from sweeper.trials import TrialState


class FunctionTrial:
    """Runs trials as calls of ``function``."""

    def __init__(self, function: Callable[[], object]) -> None:
        self.function = function

    def run(self, trial: TrialRun) -> TrialOutcome:
        """Call the function to its end; raises :class:`AbandonTrial` when the lease was lost meanwhile."""
        assignment = trial.assignment
        ctx = _context.TrialContext(
            sweep_id=assignment.sweep_id,
            trial_id=assignment.trial_id,
            trial_number=assignment.trial_number,
            config=assignment.config,
            sink=lambda record: trial.forward([record]),
            trial_dir=trial.trial_dir.path,
        )
        with LeaseKeeper(trial) as keeper:  # a checkpoint to fetch first may outlast the lease
            trial.hooks.start(assignment, trial.trial_dir, dict(os.environ))
        if keeper.lost is not None:  # the trial is someone else's now: do not call the function
            raise AbandonTrial(f"lease lost: {keeper.lost}")
        trial.stop.attach(ctx)
        # Reports and heartbeats while the function holds the agent's thread; a stop from the
        # coordinator, or a lost lease, reaches the function through its context.
        watch = LeaseKeeper(trial, every=trial.poll_interval, on_stop=ctx.request_stop)
        _context.set_current(ctx)
        try:
            with watch:
                trial.emit(TrialStarted(assignment, (), trial.trial_dir.path))
                stopped_by, error = self._call()
        finally:
            _context.set_current(None)
            trial.stop.detach()
            run_api.end_context_runs(ctx)
        if watch.lost is not None:
            raise AbandonTrial(f"lease lost: {watch.lost}")
        return _outcome(ctx, stopped_by, error)

    def _call(self) -> tuple[run_api.TrialStopped | None, BaseException | None]:
        """Call the function; how it stopped early, or the error it failed with (``sys.exit(0)`` is none)."""
        try:
            self.function()
        except run_api.TrialStopped as exc:
            return exc, None
        except SystemExit as exc:
            if exc.code not in (None, 0):
                return None, exc
        except Exception as exc:
            return None, exc
        return None, None


def _outcome(
    ctx: _context.TrialContext, stopped_by: run_api.TrialStopped | None, error: BaseException | None
) -> TrialOutcome:
    if stopped_by is not None or (error is None and ctx.stop_requested):
        reason = ctx.stop_reason or (stopped_by.reason if stopped_by else None) or "stopped"
        return TrialOutcome(TrialState.STOPPED, stop_reason=reason)
    if error is not None:
        lines = "".join(traceback.format_exception(error)).rstrip("\n").splitlines()
        code = error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else None
        tail = "\n".join(lines[-STDERR_TAIL_LINES:])
        return TrialOutcome(TrialState.FAILED, exit_code=code, stderr_tail=tail)
    return TrialOutcome(TrialState.FINISHED)
