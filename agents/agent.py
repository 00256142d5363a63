"""The agent loop: lease a trial, run it, report how it ended, repeat.

Running one trial is the job of :mod:`~sweeper.agents.command_trial` (a subprocess) or
:mod:`~sweeper.agents.function_trial` (a Python function); reporting its end, of
:mod:`~sweeper.agents.ending`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from signal import SIGHUP, SIGINT, SIGTERM

from sweeper.agents.command_trial import CommandTrial
from sweeper.agents.ending import report_end
from sweeper.agents.events import AgentEvent, TrialAbandoned
from sweeper.agents.function_trial import FunctionTrial
from sweeper.agents.hooks import TrialHook, TrialHooks, default_hooks
from sweeper.agents.logcap import DEFAULT_MAX_BYTES as DEFAULT_MAX_LOG_BYTES
from sweeper.agents.reporting import TrialReporter, backoff_delay
from sweeper.agents.spool import Spool
from sweeper.agents.streak import DEFAULT_MAX_FAILURES, FailureStreak
from sweeper.agents.trialdir import TrialDir, unwritable
from sweeper.agents.trialrun import AbandonTrial, LeaseKeeper, StopSignal, TrialRun

from sweeper.protocol import (
    AgentInfo,
    Assignment,
    CoordinatorClient,
    NoTrial,
    SweepNotFoundError,
    TrialOutcome,
    interrupted_reason,
)
from sweeper.trials import TrialState

log = logging.getLogger(__name__)


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
        monotonic: Callable[[], float] = time.monotonic,  # for intervals: it never jumps
        poll_interval: float = 0.1,
        max_backoff: float = 30.0,
        finish_timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
        interpreter: str = sys.executable,
        spool: bool = True,
        hooks: Sequence[TrialHook] | None = None,
        max_failures: int = DEFAULT_MAX_FAILURES,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ) -> None:
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.client = client
        self.sweep_id = sweep_id
        self.info = info
        self.workdir = Path(workdir)
        self.count = count
        # How each trial runs: the same for every trial this agent runs.
        self._runner: CommandTrial | FunctionTrial = (
            FunctionTrial(function)
            if function is not None
            else CommandTrial(
                workdir=self.workdir,
                program_override=program_override,
                environ=environ,
                interpreter=interpreter,
                gpu=gpu if gpu is not None else info.gpu,
                grace_period=grace_period,
                max_log_bytes=max_log_bytes,
            )
        )
        self.heartbeat_interval = heartbeat_interval
        self.report_interval = report_interval
        self.on_event = on_event
        self.clock = clock
        self.monotonic = monotonic
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.finish_timeout = finish_timeout
        self.spool = spool  # keep undelivered reports on disk in the trial folder
        # None: the metric capture and the trackers named in each assignment's integrations block.
        self.hooks = TrialHooks(default_hooks() if hooks is None else hooks)
        self.trials_run = 0
        self.failures = FailureStreak(max_failures)
        self._unprepared = 0  # trials in a row whose folder could not be made
        self.gave_up = False  # it stopped because too many trials in a row failed
        self._stop = StopSignal()

    # -- control -----------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """End the current trial with ``reason`` (it is lost, and runs again: see
        :meth:`_interrupted`) and make :meth:`run` return. Any thread."""
        self._stop.request(reason)

    def hurry(self) -> None:
        """After :meth:`stop`: kill the trial's processes now rather than at the grace period's end."""
        self._stop.hurry()

    @property
    def stopping(self) -> bool:
        return self._stop.requested

    def run(self) -> str:
        """Run trials; returns one line saying why the agent stopped."""
        failures = 0  # calls in a row that could not reach the coordinator
        waiting = _Waiting(self.monotonic)
        if (unprepared := self._folder_usable()) is not None:
            return unprepared
        while True:
            if self.stopping:
                self._end_unanswered()
                return self._stop.reason
            if self.count is not None and self.trials_run >= self.count:
                return f"ran {self.trials_run} trial(s), as many as asked for"
            try:
                reply = self.client.next_trial(self.sweep_id, self.info)
            except (PermissionError, SweepNotFoundError):  # a refused token, no sweep: waiting cannot help
                raise
            except Exception as exc:  # unreachable, timed out, or a busy store: the coordinator may come back
                failures += 1
                self._back_off(failures, exc)
                continue
            if failures:
                log.warning("%s: the coordinator is reachable again", self.info.name)
            failures = 0
            if isinstance(reply, NoTrial):
                if reply.agent_should_exit:
                    return reply.message
                if waiting.long_on(reply.message):
                    log.warning("%s: waiting: %s", self.info.name, reply.message)
                self._stop.wait(max(reply.retry_after, 0.0))
                continue
            waiting = _Waiting(self.monotonic)
            given_up = self._take(reply)
            if given_up:
                self.gave_up = True
                return given_up

    def _folder_usable(self) -> str | None:
        """Wait until trial folders can be made here; the line to stop with instead (the agent
        takes no trial it would have to give back). Asked never to stop (``max_failures`` 0), it
        waits for the folder to be fixed."""
        tries = 0
        while (problem := unwritable(self.workdir)) is not None:
            if self.failures.limit:
                self.gave_up = True
                return f"{problem}; this agent stops before it takes a trial. {_ANOTHER_FOLDER}"
            tries += 1
            delay = backoff_delay(tries, base=1.0, cap=max(self.max_backoff, 1.0))
            log.error("%s: %s; this agent tries again in %.0fs", self.info.name, problem, delay)
            self._stop.wait(delay)
            if self.stopping:
                return self._stop.reason
        return None

    def _back_off(self, failures: int, exc: Exception) -> None:
        """Wait before asking an unreachable coordinator again."""
        # One line per outage, not one per try.
        log.log(
            logging.WARNING if failures == 1 else logging.DEBUG,
            "%s: cannot get a trial from the coordinator (%s: %s); asking again with backoff",
            self.info.name,
            type(exc).__name__,
            exc,
        )
        self._stop.wait(backoff_delay(failures, base=0.5, cap=self.max_backoff))

    def _take(self, assignment: Assignment) -> str | None:
        """Run a leased trial, or give it straight back when stopping; the line to stop with once
        too many trials in a row failed."""
        self.trials_run += 1
        if self.stopping:
            self._give_back(assignment)
            return None
        try:
            outcome = self._run_assignment(assignment)
        except _CannotPrepare as exc:
            again = f"trial {assignment.trial_number} runs again"
            if self.failures.limit:
                return f"{exc}; this agent stops ({again}). {_ANOTHER_FOLDER}"
            # Asked never to stop (--max-failures 0): the disk may free up.
            self._unprepared += 1
            delay = backoff_delay(self._unprepared, base=1.0, cap=max(self.max_backoff, 1.0))
            log.error("%s: %s; %s, and this agent tries again in %.0fs", self.info.name, exc, again, delay)
            self._stop.wait(delay)
            return None
        self._unprepared = 0
        if outcome is None:
            return None
        return self.failures.record(assignment.trial_number, outcome)

    # -- one trial ---------------------------------------------------------------------------

    def _run_assignment(self, assignment: Assignment) -> TrialOutcome | None:
        """Run one trial and report how it ended; None when it was abandoned (its lease lost)."""
        started = self.clock()
        try:
            trial_dir, spool = self._prepare(assignment)
        except OSError as exc:
            # This agent's own folder, not the trial: every trial here would fail alike. The trial
            # runs again elsewhere or later, as one cut short (no attempt used), and the agent stops.
            why = f"cannot prepare the trial folder: {exc}"
            outcome = TrialOutcome(TrialState.LOST, stop_reason=interrupted_reason(why))
            self._finish(assignment, self._reporter(assignment), outcome, started)
            raise _CannotPrepare(why) from exc
        trial = TrialRun(
            assignment,
            trial_dir,
            self._reporter(assignment, spool),
            self.hooks,
            self._stop,
            self._emit,
            self.poll_interval,
        )
        try:
            outcome = self._runner.run(trial)
        except AbandonTrial as exc:
            if spool is not None:
                spool.abandon(str(exc))  # no later agent in this folder should resend these points
            self.hooks.end(assignment, TrialOutcome(TrialState.LOST, stop_reason=str(exc)), trial_dir)
            self._emit(TrialAbandoned(assignment, str(exc)))
            return None
        except Exception as exc:
            # An error of the agent's own; the runner has ended the trial's processes. Report it
            # failed, so its configuration does not wait for the lease to run out to be retried.
            why = f"sweeper agent: {type(exc).__name__}: {exc}"
            failed = TrialOutcome(TrialState.FAILED, stderr_tail=why)
            with contextlib.suppress(Exception):
                self._finish(assignment, trial.reporter, failed, started)
            raise
        outcome = self._interrupted(outcome)
        with LeaseKeeper(trial):  # uploads at the end may outlast the lease
            self.hooks.end(assignment, outcome, trial_dir)
        self._finish(assignment, trial.reporter, outcome, started)
        return outcome

    def _interrupted(self, outcome: TrialOutcome) -> TrialOutcome:
        """A trial that ended while this agent was told to stop (a signal, Ctrl-C, preemption) did
        not end by itself: it is lost, as if the agent had died, not stopped. So its configuration
        runs again when the sweep goes on, and its partial values are never the sweep's result.
        That holds too for a trial that the same signal reached first (Slurm signals every process
        of a job) and that exited, 0 or not, before the agent stopped it; a stop the coordinator
        decided (early termination, an exploit) stands."""
        if not self.stopping and _stopped_by_signal(outcome):
            # Signalled from outside, and the agent may be next (Slurm signals a job's processes
            # one by one): such a death is a failure only if nothing stops the agent meanwhile.
            self._stop.wait(SIGNAL_LAG)
        if not self.stopping or outcome.state is TrialState.LOST:
            return outcome
        if outcome.state is TrialState.STOPPED and outcome.stop_reason != self._stop.reason:
            return outcome
        return dataclasses.replace(outcome, state=TrialState.LOST, stop_reason=self._stop.reason)

    def _prepare(self, assignment: Assignment) -> tuple[TrialDir, Spool | None]:
        """The trial's folder, and its spool unless reports are kept in memory only."""
        trial_dir = TrialDir.create(self.workdir, assignment)
        spool = Spool.create(trial_dir.path, assignment) if self.spool else None
        return trial_dir, spool

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
        report_end(
            self.client,
            assignment,
            reporter,
            outcome,
            started=started,
            clock=self.clock,
            timeout=self.finish_timeout,
            stop=self._stop,
            emit=self._emit,
        )

    def _give_back(self, assignment: Assignment) -> None:
        """An assignment that came as the agent was stopping: end it now, so nobody waits for its
        lease, as lost: it never ran, and its configuration runs again."""
        outcome = TrialOutcome(TrialState.LOST, stop_reason=self._stop.reason)
        self._finish(assignment, self._reporter(assignment), outcome, self.clock())

    def _end_unanswered(self) -> None:
        """Give back the trial that an ask whose answer never arrived may have leased: left alone,
        it would run out its lease and count as a lost attempt."""
        try:
            leased = self.client.unanswered_trial(self.sweep_id, self.info)
        except Exception as exc:  # the coordinator is still away: nothing more to do from here
            log.warning(
                "%s: cannot ask whether the last unanswered ask leased a trial (%s); if it did, that "
                "trial counts as lost once its lease runs out, and runs again",
                self.info.name,
                exc,
            )
            return
        if leased is not None:
            log.info(
                "%s: trial %s, leased by an ask never answered, is given back",
                self.info.name,
                leased.trial_number,
            )
            self._give_back(leased)

    def _emit(self, event: AgentEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken progress printer must not end the sweep
            log.exception("on_event callback failed for %r", event)


class _CannotPrepare(Exception):
    """The agent cannot make trial folders where it runs (its trial was given back)."""


# Trials run in the agent's folder, and a relative ``program`` is found from there.
_ANOTHER_FOLDER = (
    "Fix the folder, or start the agent in one it can write to (a sweep's relative program path is "
    "found from the folder the agent starts in)"
)
WAIT_NOTICE_AFTER = 10.0  # seconds an agent waits for one reason before it says why (a paused sweep)
_NUMBER = re.compile(r"\d+")
SIGNAL_LAG = 1.0  # seconds a trial killed by SIGTERM, SIGINT or SIGHUP waits for its agent's own
# Killed by one of those (-N), or by a shell that exits 128 + N for them.
_STOPPING_EXITS = {sign * s + base for s in (SIGHUP, SIGINT, SIGTERM) for sign, base in ((-1, 0), (1, 128))}


def _stopped_by_signal(outcome: TrialOutcome) -> bool:
    """The trial failed of a signal that stops agents too (whoever sent it: a trial the agent
    ended for its time or stall limit waits the lag as well, and stays failed)."""
    return outcome.state is TrialState.FAILED and outcome.exit_code in _STOPPING_EXITS


class _Waiting:
    """How long the coordinator has said "nothing now" for the same reason: an agent on a paused
    sweep says so once, where short waits (the last trials of a grid running) pass unsaid. A
    reason whose numbers change ("waiting for 3 running trial(s)", then 2) is the same reason."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._reason: str | None = None
        self._since = 0.0
        self._told = False

    def long_on(self, reason: str) -> bool:
        """True once per reason, when it has been the answer for ``WAIT_NOTICE_AFTER`` seconds."""
        now = self._clock()
        reason = _NUMBER.sub("#", reason)
        if reason != self._reason:
            self._reason, self._since, self._told = reason, now, False
        if self._told or now - self._since < WAIT_NOTICE_AFTER:
            return False
        self._told = True
        return True
