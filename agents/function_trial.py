"""Running one trial as a call of a Python function in the agent's thread (``sweeper.agent(function=...)``).

The function reads its config through ``sweeper.init()``, which finds the trial's context; its
``run.log`` records reach the coordinator through that context, and a stop reaches the function as
:class:`~sweeper.run.TrialStopped` from its next ``run.log``.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable

from sweeper.agents.events import TrialStarted
from sweeper.agents.trialrun import STDERR_TAIL_LINES, AbandonTrial, TrialRun

from sweeper import _context
from sweeper import run as run_api
from sweeper.protocol import LeaseLostError, TrialOutcome
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
        trial.hooks.start(assignment, trial.trial_dir, dict(os.environ))
        trial.stop.attach(ctx)
        watch = _CoordinatorWatch(trial, ctx)
        _context.set_current(ctx)
        watch.start()
        trial.emit(TrialStarted(assignment, (), trial.trial_dir.path))
        try:
            stopped_by, error = self._call()
        finally:
            watch.finish()
            _context.set_current(None)
            trial.stop.detach()
            run_api.end_context_runs(ctx)
        if watch.lease_lost is not None:
            raise AbandonTrial(f"lease lost: {watch.lease_lost}")
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


class _CoordinatorWatch:
    """Reports and heartbeats from a thread of its own while the function holds the agent's thread.

    A stop from the coordinator, or a lost lease, reaches the function through its context.
    """

    def __init__(self, trial: TrialRun, ctx: _context.TrialContext) -> None:
        self._trial = trial
        self._ctx = ctx
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._pump, name=f"sweeper-trial-{trial.assignment.trial_number}", daemon=True
        )
        self.lease_lost: str | None = None  # why, once the coordinator said the lease is gone

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self._done.set()
        self._thread.join()

    def _pump(self) -> None:
        while not self._done.wait(self._trial.poll_interval):
            try:
                reason = self._trial.coordinator_stop()
            except LeaseLostError as exc:
                self.lease_lost = str(exc)
                self._ctx.request_stop(f"lease lost: {exc}")
                return
            if reason is not None:
                self._ctx.request_stop(reason)
