"""The agent loop: lease a trial, run it, forward its metrics, report how it ended, repeat."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sweeper.agents.command import expand_command
from sweeper.agents.events import AgentEvent, TrialAbandoned, TrialEnded, TrialStarted
from sweeper.agents.hooks import TrialHook, TrialHooks, default_hooks
from sweeper.agents.metrics import MetricTailer, points_from_record
from sweeper.agents.process import TrialProcess, describe_exit, stderr_tail
from sweeper.agents.reporting import TrialReporter, backoff_delay
from sweeper.agents.spool import Spool
from sweeper.agents.streak import DEFAULT_MAX_FAILURES, FailureStreak
from sweeper.agents.trialdir import TrialDir, trial_env

from sweeper import _context
from sweeper import run as run_api
from sweeper.protocol import (
    AgentInfo,
    Assignment,
    CoordinatorClient,
    LeaseLostError,
    NoTrial,
    SweepNotFoundError,
    TrialOutcome,
)
from sweeper.trials import TrialState

log = logging.getLogger(__name__)

_TAIL_LINES = 40
# Calls made after stop() get this many tries, so Ctrl-C never waits on a dead coordinator for long.
_TRIES_WHEN_STOPPING = 3
# How long an undeliverable end report is retried at least, before it is left on disk.
_FINISH_RETRY_SECONDS = 600.0


class _Abandon(Exception):
    """The trial must be given up without a report (its lease is gone)."""


class Agent:
    """Runs trials of one sweep until the coordinator says it is done, ``count`` is reached, or :meth:`stop`.

    Without ``function`` each trial is a subprocess built from the sweep's ``command``; with it,
    ``function()`` is called in this thread and reads its config through ``sweeper.init()``.
    """

    def __init__(
        self,
        client: CoordinatorClient,
        sweep_id: str,
        *,
        info: AgentInfo,
        workdir: Path,
        count: int | None = None,
        function: Callable[[], object] | None = None,
        program_override: str | None = None,
        heartbeat_interval: float = 2.0,
        report_interval: float = 0.5,
        grace_period: float = 10.0,
        gpu: str | None = None,
        on_event: Callable[[AgentEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.1,
        max_backoff: float = 30.0,
        finish_timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
        interpreter: str = sys.executable,
        spool: bool = True,
        hooks: Sequence[TrialHook] | None = None,
        max_failures: int = DEFAULT_MAX_FAILURES,
    ) -> None:
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.client = client
        self.sweep_id = sweep_id
        self.info = info
        self.workdir = Path(workdir)
        self.count = count
        self.function = function
        self.program_override = program_override
        self.heartbeat_interval = heartbeat_interval
        self.report_interval = report_interval
        self.grace_period = grace_period
        self.gpu = gpu if gpu is not None else info.gpu
        self.on_event = on_event
        self.clock = clock
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.finish_timeout = finish_timeout
        self.environ = environ
        self.interpreter = interpreter
        self.spool = spool  # keep undelivered reports on disk in the trial folder
        # None: the metric capture and the trackers named in each assignment's integrations block.
        self.hooks = TrialHooks(default_hooks() if hooks is None else hooks)
        self.trials_run = 0
        self.failures = FailureStreak(max_failures)
        self.gave_up = False  # it stopped because too many trials in a row failed
        self._stop_event = threading.Event()
        self._stop_reason: str | None = None
        self._active_context: _context.TrialContext | None = None

    # -- control -----------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """End the current trial as STOPPED with ``reason`` and make :meth:`run` return. Any thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        ctx = self._active_context
        if ctx is not None:
            ctx.request_stop(reason)
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def run(self) -> str:
        """Run trials; returns one line saying why the agent stopped."""
        failures = 0
        while True:
            if self.stopping:
                return self._stop_reason or "stopped"
            if self.count is not None and self.trials_run >= self.count:
                return f"ran {self.trials_run} trial(s), as many as asked for"
            try:
                reply = self.client.next_trial(self.sweep_id, self.info)
            except (PermissionError, SweepNotFoundError):  # a refused token, no sweep: waiting cannot help
                raise
            except Exception as exc:  # unreachable, timed out, or a busy store: the coordinator may come back
                failures += 1
                delay = backoff_delay(failures, base=0.5, cap=self.max_backoff)
                # One line per outage, not one per try.
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "%s: cannot get a trial from the coordinator (%s: %s); asking again with backoff",
                    self.info.name,
                    type(exc).__name__,
                    exc,
                )
                self._stop_event.wait(delay)
                continue
            if failures:
                log.warning("%s: the coordinator is reachable again", self.info.name)
            failures = 0
            if isinstance(reply, NoTrial):
                if reply.agent_should_exit:
                    return reply.message
                self._stop_event.wait(max(reply.retry_after, 0.0))
                continue
            self.trials_run += 1
            if self.stopping:
                self._give_back(reply)
                continue
            outcome = self._run_assignment(reply)
            given_up = outcome and self.failures.record(reply.trial_number, outcome)
            if given_up:
                self.gave_up = True
                return given_up

    # -- one trial ---------------------------------------------------------------------------

    def _run_assignment(self, assignment: Assignment) -> TrialOutcome | None:
        """Run one trial and report how it ended; None when it was abandoned (its lease lost)."""
        started = self.clock()
        spool: Spool | None = None
        try:
            trial_dir = TrialDir.create(self.workdir, assignment)
            if self.spool:
                spool = Spool.create(trial_dir.path, assignment)
        except OSError as exc:
            message = f"sweeper: cannot prepare the trial folder: {exc}"
            outcome = TrialOutcome(TrialState.FAILED, stderr_tail=message)
            self._finish(assignment, self._reporter(assignment), outcome, started)
            return outcome
        reporter = self._reporter(assignment, spool)
        try:
            if self.function is not None:
                outcome = self._run_function(assignment, trial_dir, reporter)
            else:
                outcome = self._run_process(assignment, trial_dir, reporter)
        except _Abandon as exc:
            if spool is not None:
                spool.abandon(str(exc))  # no later agent in this folder should resend these points
            self.hooks.end(assignment, TrialOutcome(TrialState.LOST, stop_reason=str(exc)), trial_dir)
            self._emit(TrialAbandoned(assignment, str(exc)))
            return None
        self.hooks.end(assignment, outcome, trial_dir)
        self._finish(assignment, reporter, outcome, started)
        return outcome

    def _run_process(
        self, assignment: Assignment, trial_dir: TrialDir, reporter: TrialReporter
    ) -> TrialOutcome:
        program = self.program_override or assignment.program
        environ = os.environ if self.environ is None else self.environ
        try:
            argv = expand_command(
                assignment.command,
                config=assignment.config,
                program=program,
                args_json_path=trial_dir.args_json_path,
                interpreter=self.interpreter,
                environ=environ,
            )
        except (OSError, TypeError, ValueError) as exc:
            return TrialOutcome(TrialState.FAILED, stderr_tail=f"sweeper: cannot build the command: {exc}")
        env = trial_env(environ, assignment, trial_dir, gpu=self.gpu)
        env.update(self.hooks.start(assignment, trial_dir, env))
        proc = TrialProcess.start(
            argv,
            env=env,
            cwd=self.workdir,
            stdout_path=trial_dir.stdout_path,
            stderr_path=trial_dir.stderr_path,
        )
        self._emit(TrialStarted(assignment, tuple(argv), trial_dir.path))
        tailer = MetricTailer(trial_dir.metrics_path)
        stop_reason: str | None = None
        while True:
            code = proc.poll()
            self._forward(assignment, reporter, tailer.read_records())
            if code is not None:
                break
            if self.stopping:
                stop_reason = self._stop_reason or "stopped"
                break
            try:
                directive = reporter.pump()
            except LeaseLostError as exc:
                proc.kill()
                raise _Abandon(f"lease lost: {exc}") from exc
            if directive is not None and directive.stop:
                stop_reason = directive.reason or "stopped by the coordinator"
                break
            self._stop_event.wait(self.poll_interval)

        tail_path = trial_dir.stderr_path
        if stop_reason is not None and proc.poll() is None:
            code = proc.terminate(self.grace_period)
            self._forward(assignment, reporter, tailer.read_records())
            return TrialOutcome(
                TrialState.STOPPED,
                exit_code=code,
                stderr_tail=stderr_tail(tail_path, _TAIL_LINES) or None,
                stop_reason=stop_reason,
            )
        code = proc.poll()
        assert code is not None
        self._forward(assignment, reporter, tailer.read_records())
        if code == 0:
            return TrialOutcome(TrialState.FINISHED, exit_code=0)
        tail = stderr_tail(tail_path, _TAIL_LINES)
        if code < 0:
            tail = f"{tail}\nsweeper: the trial process was {describe_exit(code)}".lstrip("\n")
        return TrialOutcome(TrialState.FAILED, exit_code=code, stderr_tail=tail)

    def _run_function(
        self, assignment: Assignment, trial_dir: TrialDir, reporter: TrialReporter
    ) -> TrialOutcome:
        assert self.function is not None
        ctx = _context.TrialContext(
            sweep_id=assignment.sweep_id,
            trial_id=assignment.trial_id,
            trial_number=assignment.trial_number,
            config=assignment.config,
            sink=lambda record: self._forward(assignment, reporter, [record]),
            trial_dir=trial_dir.path,
        )
        lease_lost: list[str] = []
        done = threading.Event()

        def pump() -> None:
            # The function runs in the agent's thread, so heartbeats go from here meanwhile.
            while not done.wait(self.poll_interval):
                try:
                    directive = reporter.pump()
                except LeaseLostError as exc:
                    lease_lost.append(str(exc))
                    ctx.request_stop(f"lease lost: {exc}")
                    return
                if directive is not None and directive.stop:
                    ctx.request_stop(directive.reason or "stopped by the coordinator")

        self.hooks.start(assignment, trial_dir, dict(os.environ))
        self._active_context = ctx
        if self.stopping:
            ctx.request_stop(self._stop_reason or "stopped")
        pumper = threading.Thread(target=pump, name=f"sweeper-trial-{assignment.trial_number}", daemon=True)
        _context.set_current(ctx)
        pumper.start()
        self._emit(TrialStarted(assignment, (), trial_dir.path))
        error: BaseException | None = None
        stopped_by: run_api.TrialStopped | None = None
        try:
            self.function()
        except run_api.TrialStopped as exc:
            stopped_by = exc
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = exc
        except Exception as exc:
            error = exc
        finally:
            done.set()
            pumper.join()
            _context.set_current(None)
            self._active_context = None
            run_api.end_context_runs(ctx)

        if lease_lost:
            raise _Abandon(f"lease lost: {lease_lost[0]}")
        if stopped_by is not None or (error is None and ctx.stop_requested):
            reason = ctx.stop_reason or (stopped_by.reason if stopped_by else None) or "stopped"
            return TrialOutcome(TrialState.STOPPED, stop_reason=reason)
        if error is not None:
            lines = "".join(traceback.format_exception(error)).rstrip("\n").splitlines()
            code = error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else None
            tail = "\n".join(lines[-_TAIL_LINES:])
            return TrialOutcome(TrialState.FAILED, exit_code=code, stderr_tail=tail)
        return TrialOutcome(TrialState.FINISHED)

    def _reporter(self, assignment: Assignment, spool: Spool | None = None) -> TrialReporter:
        return TrialReporter(
            self.client,
            assignment,
            clock=self.clock,
            report_interval=self.report_interval,
            heartbeat_interval=self.heartbeat_interval,
            max_backoff=self.max_backoff,
            queue=spool,
        )

    # -- reporting the end -------------------------------------------------------------------

    def _finish(
        self, assignment: Assignment, reporter: TrialReporter, outcome: TrialOutcome, started: float
    ) -> None:
        """Send the remaining points, then the outcome; retried with backoff while the coordinator is away.

        Policy: the outcome is written to the trial folder first, then retried for ``finish_timeout``
        seconds (default: twice the lease, at least 10 minutes), or 3 tries once the agent is
        stopping. A report still undelivered then stays on disk, and the next agent started in the
        same folder delivers it (:func:`~sweeper.agents.reporting.deliver_leftovers`).
        """
        spool = reporter.queue if isinstance(reporter.queue, Spool) else None
        if spool is not None:
            try:
                spool.keep_outcome(outcome)
            except OSError as exc:
                log.warning("trial %s: cannot keep the outcome on disk: %s", assignment.trial_number, exc)
        timeout = self.finish_timeout
        if timeout is None:
            timeout = max(2 * assignment.lease_seconds, _FINISH_RETRY_SECONDS)
        deadline = self.clock() + timeout
        tries = 0
        while True:
            tries += 1
            try:
                reporter.send_all()
                self.client.finish_trial(assignment.trial_id, assignment.lease_id, outcome)
                break
            except LeaseLostError as exc:
                if spool is not None:
                    spool.abandon(f"lease lost: {exc}")
                self._emit(TrialAbandoned(assignment, f"lease lost: {exc}"))
                return
            except Exception as exc:
                delay = reporter.record_failure(exc)
                give_up = self.clock() >= deadline or (self.stopping and tries >= _TRIES_WHEN_STOPPING)
                if give_up:
                    kept = f"; kept in {spool.folder} for the next agent" if spool is not None else ""
                    reason = f"could not report the end to the coordinator: {exc}{kept}"
                    self._emit(TrialAbandoned(assignment, reason))
                    return
                # Once stopping, the stop event is set; wait on a fresh one so the retries still pause.
                (threading.Event() if self.stopping else self._stop_event).wait(delay)
        if spool is not None:
            spool.delivered()
        self._emit(TrialEnded(assignment, outcome, self.clock() - started, dict(reporter.summary)))

    def _forward(self, assignment: Assignment, reporter: TrialReporter, records: list) -> None:
        """New metric records go to the coordinator (through the reporter) and to the hooks."""
        reporter.add([point for record in records for point in points_from_record(record)])
        self.hooks.metrics(assignment, records)

    def _give_back(self, assignment: Assignment) -> None:
        """An assignment that came as the agent was stopping: end it now, so nobody waits for its lease."""
        outcome = TrialOutcome(TrialState.STOPPED, stop_reason=self._stop_reason or "stopped")
        self._finish(assignment, self._reporter(assignment), outcome, self.clock())

    def _emit(self, event: AgentEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken progress printer must not end the sweep
            log.exception("on_event callback failed for %r", event)
