"""What an agent hands the code that runs one trial (a command or a function): the trial's folder and
reporter, its hooks, the agent's stop signal, and the way to give a trial up without a report."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sweeper.agents.events import AgentEvent
from sweeper.agents.hooks import TrialHooks
from sweeper.agents.metrics import points_from_record
from sweeper.agents.reporting import TrialReporter
from sweeper.agents.signalled import stopping_signal
from sweeper.agents.trialdir import TrialDir

from sweeper import _context
from sweeper.protocol import Assignment, LeaseLostError, is_interrupted

#: Lines of a failed or stopped trial's stderr (or traceback) that go to the coordinator.
STDERR_TAIL_LINES = 40


class AbandonTrial(Exception):
    """The trial must be given up without a report (its lease is gone)."""


class StopSignal:
    """A request, from any thread, that the agent end its trial as STOPPED and return.

    The first reason given is the one the agent stops with. A function trial running meanwhile is
    told through its context, since it only hears of a stop on its next ``run.log``.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.hurried = threading.Event()  # and the trial's processes are to be killed now
        self._reason: str | None = None
        self._context: _context.TrialContext | None = None
        self._wake: threading.Event | None = None

    def request(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
        context = self._context
        if context is not None:
            context.request_stop(reason)
        self._event.set()
        wake = self._wake
        if wake is not None:
            wake.set()

    def hurry(self) -> None:
        """End the trial's processes now (SIGKILL), without the rest of their grace period."""
        self.hurried.set()

    @contextmanager
    def waking(self, wake: threading.Event) -> Iterator[None]:
        """Inside, a stop request also sets ``wake``: one event a loop can sleep on that other
        happenings set too (its trial's process exiting). One trial at a time watches."""
        self._wake = wake
        if self.requested:
            wake.set()
        try:
            yield
        finally:
            self._wake = None

    @property
    def requested(self) -> bool:
        """Asked for, or a stopping signal has reached the process (its handler, which asks,
        may not have run yet)."""
        return self._event.is_set() or stopping_signal() is not None

    @property
    def reason(self) -> str:
        return self._reason or stopping_signal() or "stopped"

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a stop request ends the sleep early."""
        self._event.wait(seconds)

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` even once stopping, so retries made after a stop still pause between tries."""
        (threading.Event() if self.requested else self._event).wait(seconds)

    def attach(self, context: _context.TrialContext) -> None:
        """Pass stop requests on to this function trial's context, starting with one already made."""
        self._context = context
        if self.requested:
            context.request_stop(self.reason)

    def detach(self) -> None:
        self._context = None


@dataclass(frozen=True)
class TrialRun:
    """One leased trial while it runs."""

    assignment: Assignment
    trial_dir: TrialDir
    reporter: TrialReporter
    hooks: TrialHooks
    stop: StopSignal
    emit: Callable[[AgentEvent], None]
    poll_interval: float

    def forward(self, records: Sequence[Mapping[str, Any]]) -> None:
        """New metric records go to the coordinator (through the reporter) and to the hooks."""
        self.reporter.add([point for record in records for point in points_from_record(record)])
        self.hooks.metrics(self.assignment, records)

    def coordinator_stop(self) -> str | None:
        """Report or heartbeat when one is due; the reason when the coordinator says to stop.

        Raises :class:`~sweeper.protocol.LeaseLostError`.
        """
        # The agent was told to stop (a signal): the coordinator hears so at once, so a scheduler
        # that kills the agent before the trial has ended leaves the trial interrupted, not spent.
        interrupted = self.stop.reason if self.stop.requested and is_interrupted(self.stop.reason) else None
        directive = self.reporter.pump(interrupted=interrupted)
        if directive is not None and directive.stop:
            return directive.reason or "stopped by the coordinator"
        return None


class LeaseKeeper:
    """Reports and heartbeats from a thread of its own while the agent's thread is busy elsewhere:
    a function trial running, hooks that fetch or upload checkpoints and artifacts, a trial given
    its grace period to shut down. Without them a phase longer than the lease costs a trial that
    ran, or is ending well, its lease: it would be counted lost and run again.

    Only this thread talks to the coordinator for the trial while the block runs. ``on_stop``
    hears a stop from the coordinator, or a lost lease, with its reason.
    """

    def __init__(
        self, trial: TrialRun, every: float = 0.2, on_stop: Callable[[str], None] | None = None
    ) -> None:
        self._trial = trial
        self._every = every
        self._on_stop = on_stop
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"sweeper-trial-{trial.assignment.trial_number}", daemon=True
        )
        self.lost: LeaseLostError | None = None  # the coordinator refused the lease meanwhile

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def raise_if_lost(self) -> None:
        """:class:`AbandonTrial` when the coordinator refused the lease while the block ran: the
        trial is someone else's now."""
        if self.lost is not None:
            raise AbandonTrial(f"lease lost: {self.lost}")

    def _run(self) -> None:
        while not self._done.wait(self._every):
            try:
                reason = self._trial.coordinator_stop()  # sends only what is due
            except LeaseLostError as exc:
                self.lost = exc
                if self._on_stop is not None:
                    self._on_stop(f"lease lost: {exc}")
                return
            if reason is not None and self._on_stop is not None:
                self._on_stop(reason)


def start_hooks(trial: TrialRun, env: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The hooks' starts, with the lease kept meanwhile (a checkpoint to fetch first, a tracker's
    run to wait for, may outlast it): the variables they add to the trial's environment, and why
    the trial is not to run after all, or None.

    A stop heard meanwhile (the agent's, or the coordinator's for this trial or its sweep) ends a
    hook's wait, so the stop need not wait for a slow tracker, and the trial is then not started
    at all. Raises :class:`AbandonTrial` when the lease was lost meanwhile.
    """
    stopping = threading.Event()
    told: list[str] = []  # the coordinator's reasons, the first one first

    def on_stop(reason: str) -> None:
        told.append(reason)
        stopping.set()

    with trial.stop.waking(stopping), LeaseKeeper(trial, on_stop=on_stop) as keeper:
        extra = trial.hooks.start(trial.assignment, trial.trial_dir, env, stopping)
    keeper.raise_if_lost()
    if trial.stop.requested:
        return extra, trial.stop.reason
    return extra, told[0] if told else None
