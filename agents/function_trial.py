"""Running one trial as a call of a Python function in the agent's thread (``sweeper.agent(function=...)``).

The function reads its config through ``sweeper.init()``, which finds the trial's context; its
``run.log`` records reach the coordinator through that context, and a stop reaches the function as
:class:`~sweeper.run.TrialStopped` from its next ``run.log``.

A function written for ``wandb.agent`` runs unchanged, as it does there: while it runs, the
process's environment holds the trial's variables (``WANDB_SWEEP_PARAM_PATH`` and the rest, and
what the trackers add, such as ``MLFLOW_RUN_ID``), so ``wandb.init()`` gets the trial's config and
``mlflow.start_run()`` the trial's run; what it logs with ``wandb.log`` or ``mlflow.log_metric(s)``
reaches the coordinator too, a stop raises from those calls as well, and a W&B run it leaves open
is finished when it returns.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from sweeper.agents.events import TrialStarted
from sweeper.agents.limits import time_limit_reason
from sweeper.agents.pythonpath import _sweeper_capture as capture
from sweeper.agents.trialdir import trial_env
from sweeper.agents.trialrun import STDERR_TAIL_LINES, LeaseKeeper, TrialRun, start_hooks

from sweeper import _context
from sweeper import run as run_api
from sweeper.protocol import TrialOutcome
from sweeper.trials import TrialState

log = logging.getLogger(__name__)


class FunctionTrial:
    """Runs trials as calls of ``function``."""

    def __init__(self, function: Callable[[], object]) -> None:
        self.function = function
        self._said_returned = False  # that what the function returns is not recorded

    def run(self, trial: TrialRun) -> TrialOutcome:
        """Call the function to its end; raises :class:`AbandonTrial` when the lease was lost meanwhile."""
        assignment = trial.assignment
        if assignment.stall_limit is not None:
            log.warning(
                "trial %s: sweeper.stall_timeout applies to trials run as commands; a function runs "
                "in this process, which cannot be ended from outside",
                assignment.trial_number,
            )
        ctx = _context.TrialContext(
            sweep_id=assignment.sweep_id,
            trial_id=assignment.trial_id,
            trial_number=assignment.trial_number,
            config=assignment.config,
            sink=lambda record: trial.forward([record]),
            trial_dir=trial.trial_dir.path,
        )
        env = trial_env({}, assignment, trial.trial_dir)
        extra, stop_reason = start_hooks(trial, {**os.environ, **env})
        if stop_reason is not None:  # stopped before it started: the function is not called
            return TrialOutcome(TrialState.STOPPED, stop_reason=stop_reason)
        env.update(extra)
        env.pop("PYTHONPATH", None)  # the capture's, for trial processes: here it runs in this process
        trial.stop.attach(ctx)
        # Reports and heartbeats while the function holds the agent's thread; a stop from the
        # coordinator, or a lost lease, reaches the function through its context.
        watch = LeaseKeeper(trial, every=trial.poll_interval, on_stop=ctx.request_stop)
        # A time limit reaches the function as a stop, at its next log call, as any other stop does.
        timer = None
        if assignment.time_limit is not None:
            reason = time_limit_reason(assignment.time_limit)
            timer = threading.Timer(assignment.time_limit, ctx.request_stop, args=(reason,))
            timer.daemon = True
            timer.start()
        _context.set_current(ctx)
        try:
            with watch, _environment(env):
                trial.emit(TrialStarted(assignment, (), trial.trial_dir.path))
                stopped_by, error = self._call(ctx, trial, env)
        finally:
            if timer is not None:
                timer.cancel()
            _context.set_current(None)
            trial.stop.detach()
            run_api.end_context_runs(ctx)
        watch.raise_if_lost()
        return _outcome(ctx, stopped_by, error)

    def _call(
        self, ctx: _context.TrialContext, trial: TrialRun, env: Mapping[str, str]
    ) -> tuple[run_api.TrialStopped | None, BaseException | None]:
        """Call the function; how it stopped early, or the error it failed with (``sys.exit(0)`` is none)."""

        following = os.environ.get("SWEEPER_CAPTURE", "1") != "0"
        stopped_by: run_api.TrialStopped | None = None
        error: BaseException | None = None
        returned = False
        try:
            if following:
                capture.follow_in_process(
                    lambda record: trial.forward([record]), lambda: run_api.raise_if_stopped(ctx), env
                )
            result = self.function()
            returned = True
            if result is not None and not self._said_returned:
                self._said_returned = True  # once per agent: it returns the same kind each time
                log.warning(
                    "trial %s: %s returned %.80r, which sweeper does not record (nor does wandb.agent): "
                    "log the metric with sweeper.log({...}) or run.log({...})",
                    trial.assignment.trial_number,
                    getattr(self.function, "__name__", "the function"),
                    result,
                )
        except run_api.TrialStopped as exc:
            stopped_by = exc
        except SystemExit as exc:
            error = exc if exc.code not in (None, 0) else None
            returned = error is None
        except Exception as exc:
            error = exc
        finally:
            if following:  # the exit code W&B shows for the run, as the trial's command would end
                failed = error is not None
                stopped = not failed and (stopped_by is not None or ctx.stop_requested or not returned)
                capture.stop_following(1 if failed else 143 if stopped else 0)
        return stopped_by, error


_environment_lock = threading.Lock()
_environment_users = 0  # function trials running in this process


@contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` holds ``variables`` while the block runs, and what it held before after.

    The environment is the process's: when function trials run side by side (several local
    agents in one process), only the first one's variables are set; the others see them too, so
    a ``wandb.init()`` or ``mlflow.start_run()`` of theirs fails with a message that says so."""
    global _environment_users
    with _environment_lock:
        alone = _environment_users == 0
        _environment_users += 1
    before = {name: os.environ.get(name) for name in variables} if alone else {}
    if alone:
        os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        with _environment_lock:
            _environment_users -= 1


def _outcome(
    ctx: _context.TrialContext, stopped_by: run_api.TrialStopped | None, error: BaseException | None
) -> TrialOutcome:
    if stopped_by is not None or (error is None and ctx.stop_requested):
        reason = ctx.stop_reason or (stopped_by.reason if stopped_by else None) or "stopped"
        return TrialOutcome(TrialState.STOPPED, stop_reason=reason)
    if error is not None:
        lines = "".join(traceback.format_exception(error)).rstrip("\n").splitlines()
        # As the process running it would have exited: sys.exit(n) with n (as a status byte),
        # else (an exception, sys.exit("message")) with 1.
        given = error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1
        code = int(given) % 256 or 1  # failed all the same: a status that reads as success is 1
        tail = "\n".join(lines[-STDERR_TAIL_LINES:])
        return TrialOutcome(TrialState.FAILED, exit_code=code, stderr_tail=tail)
    return TrialOutcome(TrialState.FINISHED, exit_code=0)  # as a command that returned
