"""Coordinator and agents in one process tree: what ``sweeper run`` and ``sweeper.agent`` use.

Each local agent is a thread driving its own trial process (or calling a function), all of
them talking to one in-process :class:`~sweeper.coordinator.Coordinator`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.agents import Agent, AgentEvent
from sweeper.agents.gpus import described_devices
from sweeper.agents.logcap import DEFAULT_MAX_BYTES as DEFAULT_MAX_LOG_BYTES
from sweeper.agents.orphans import end_orphans
from sweeper.agents.reporting import deliver_leftovers
from sweeper.agents.spool import FOREIGN_QUIET_SECONDS
from sweeper.agents.streak import DEFAULT_MAX_FAILURES, GIVE_UP_ADVICE
from sweeper.protocol import (
    AgentInfo,
    Assignment,
    CoordinatorClient,
    Directive,
    NoTrial,
    NoTrialReason,
    TrialOutcome,
)
from sweeper.store.base import InvalidTransitionError
from sweeper.trials import MetricPoint, SweepState

log = logging.getLogger(__name__)


class TrialBudget:
    """Wraps a client so that all agents together receive at most ``count`` trials."""

    def __init__(self, client: CoordinatorClient, count: int | None) -> None:
        self._client = client
        self._count = count
        self._given = 0
        self._lock = threading.Lock()

    def next_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | NoTrial:
        with self._lock:  # held across the call so concurrent agents cannot overshoot
            if self._count is not None and self._given >= self._count:
                return NoTrial(
                    NoTrialReason.DONE,
                    f"the requested count of {self._count} trial{'s' if self._count != 1 else ''} has run",
                )
            result = self._client.next_trial(sweep_id, agent)
            if isinstance(result, Assignment):
                self._given += 1
            return result

    def unanswered_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | None:
        return self._client.unanswered_trial(sweep_id, agent)  # given back at once: not counted

    def heartbeat(self, trial_id: int, lease_id: str, *, interrupted: str | None = None) -> Directive:
        return self._client.heartbeat(trial_id, lease_id, interrupted=interrupted)

    def report_metrics(self, trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive:
        return self._client.report_metrics(trial_id, lease_id, points)

    def finish_trial(self, trial_id: int, lease_id: str, outcome: TrialOutcome) -> None:
        self._client.finish_trial(trial_id, lease_id, outcome)


# Seconds between looks for leftovers while agents run: a spool is another's until quiet this long.
LEFTOVERS_AGAIN_SECONDS = FOREIGN_QUIET_SECONDS + 5.0


def agent_info(slot: int, gpu: str | None = None) -> AgentInfo:
    host = socket.gethostname()
    return AgentInfo(name=f"{host}:{_process_tag(os.getpid())}:{slot}", host=host, gpu=gpu)


@functools.cache
def _process_tag(pid: int) -> str:
    """The process id and a random tag: agents in containers often share a hostname (host
    networking) and a process id (1, or 2 under an init), and a retry kept away from the agent
    it failed on must not go back to it under a shared name."""
    return f"{pid}-{secrets.token_hex(3)}"


@dataclass
class LocalAgents:
    """N agent threads on one sweep. ``wait`` returns the agents' exit reasons."""

    client: CoordinatorClient
    sweep_id: str
    agents: int = 1
    count: int | None = None
    workdir: Path = field(default_factory=Path.cwd)
    program_override: str | None = None
    function: Callable[[], object] | None = None
    grace_period: float = 10.0
    on_event: Callable[[AgentEvent], None] | None = None
    # One agent per entry, each seeing only those GPUs (a CUDA_VISIBLE_DEVICES value); replaces ``agents``.
    gpus: Sequence[str] | None = None
    max_backoff: float = 30.0  # longest wait between retries while the coordinator is unreachable
    max_failures: int = DEFAULT_MAX_FAILURES  # an agent stops after this many failed trials in a row
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES  # a trial's stdout.log or stderr.log is cut back past this
    # The caller owns the sweep (`sweeper run`): when every agent gave up, the sweep is stopped
    # (`sweeper resume` takes it up again) before its tracker record ends, which then says so.
    stop_when_given_up: bool = False
    _agents: list[Agent] = field(default_factory=list, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _reasons: list[tuple[bool, str]] = field(default_factory=list, init=False)  # (gave up, why)
    _errors: list[BaseException] = field(default_factory=list, init=False)
    _done: list[threading.Event] = field(default_factory=list, init=False)
    _recorder: Any = field(default=None, init=False)  # the sweep's tracker record, if it names trackers
    _tracking: bool = field(default=False, init=False)  # started, and its trackers not closed yet
    _all_done: threading.Event = field(default_factory=threading.Event, init=False)

    def start(self) -> None:
        if self.function is None:  # trials an agent that died here left running hold their GPUs
            end_orphans(self.workdir, self.grace_period)
        self._deliver_leftovers()
        threading.Thread(target=self._deliver_leftovers_later, name="leftovers", daemon=True).start()
        budget = TrialBudget(self.client, self.count)
        self._recorder = _sweep_recorder(self.client, self.sweep_id)
        from sweeper.integrations.session import use_sweep

        use_sweep(self.sweep_id)  # _end_tracking closes the trackers, once no other group here needs them
        self._tracking = True
        slots: list[str | None] = list(self.gpus) if self.gpus else [None] * self.agents
        for slot, gpu in enumerate(slots):
            agent = Agent(
                budget,
                self.sweep_id,
                info=agent_info(slot, gpu),
                workdir=self.workdir,
                function=self.function,
                program_override=self.program_override,
                grace_period=self.grace_period,
                on_event=self._on_event if self._recorder is not None else self.on_event,
                max_backoff=self.max_backoff,
                max_failures=self.max_failures,
                max_log_bytes=self.max_log_bytes,
            )
            done = threading.Event()
            thread = threading.Thread(target=self._run, args=(agent, done), name=f"agent-{slot}", daemon=True)
            self._done.append(done)
            self._agents.append(agent)
            self._threads.append(thread)
            thread.start()

    def _deliver_leftovers(self) -> None:
        """Send what an agent killed in this folder left undelivered, before new trials start."""
        try:
            deliver_leftovers(self.client, self.workdir, self.sweep_id)
        except OSError as exc:
            log.warning(
                "could not deliver reports an earlier agent left here yet (%s); they stay on disk", exc
            )

    def _deliver_leftovers_later(self) -> None:
        """Look again now and then while the agents run: a spool another agent was writing when
        they started (on another machine, or in this container's earlier life: its quiet minute,
        see Spool.in_use) is a leftover once quiet, and a coordinator that was away comes back."""
        while not self._all_done.wait(LEFTOVERS_AGAIN_SECONDS):
            self._deliver_leftovers()

    def _run(self, agent: Agent, done: threading.Event) -> None:
        try:
            reason = agent.run()
            self._reasons.append((agent.gave_up, reason))
            if agent.gave_up and not all(d.is_set() for d in self._done if d is not done):
                # Said now, not when the other slots end, maybe hours later.
                gpu = agent.info.gpu
                where = described_devices(gpu) if gpu is not None else "one of the slots"
                log.warning(
                    "%s stops taking trials: %s",
                    where,
                    _others_go_on(reason),
                )
        except BaseException as exc:  # surfaced by wait(), never lost in a thread
            self._errors.append(exc)
        finally:
            done.set()

    def wait(self, poll: float = 0.05) -> list[str]:
        """Wait for the agents, staying responsive to KeyboardInterrupt in the main thread."""
        # Not Thread.join: on CPython 3.11 a KeyboardInterrupt inside join() can mark a thread that
        # is still running as ended, and the process would exit with its trial unreported.
        while not all(done.is_set() for done in self._done):
            time.sleep(poll)
        self._all_done.set()
        for thread in self._threads:
            thread.join()
        try:
            if self.stop_when_given_up and self.gave_up:  # a stopped sweep stays as it is
                with contextlib.suppress(InvalidTransitionError):  # it ended, or was cancelled, meanwhile
                    self.client.set_sweep_state(self.sweep_id, SweepState.STOPPED)
        finally:
            self._end_tracking()
        if self._errors:
            raise self._errors[0]
        # A slot that gave up (a broken GPU) says least about the sweep: the others' reasons first.
        return [reason for _, reason in sorted(self._reasons, key=lambda ended: ended[0])]

    @property
    def gave_up(self) -> bool:
        """Every agent stopped because too many of its trials in a row failed."""
        return bool(self._agents) and all(agent.gave_up for agent in self._agents)

    def stop(self, reason: str) -> None:
        for agent in self._agents:
            agent.stop(reason)

    def hurry(self) -> None:
        for agent in self._agents:
            agent.hurry()

    def _on_event(self, event: AgentEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
        self._recorder.on_event(event)

    def _end_tracking(self) -> None:
        """Every agent is done: bring the sweep's record up to date and flush the trackers, here
        rather than at the interpreter's exit, where a long wait could not be cut short."""
        if not self._tracking:
            return
        self._tracking = False
        recorder, self._recorder = self._recorder, None
        stopped = any(agent.stopping for agent in self._agents)
        try:
            if recorder is not None:
                recorder.finish("stopped" if stopped else None)
        finally:
            from sweeper.integrations.session import close_sweep

            try:
                close_sweep(self.sweep_id)
            except KeyboardInterrupt:  # asked not to wait: the sweep itself is done and stored
                log.warning(
                    "sweep %s: stopped waiting for the trackers; what they had not received yet is not sent",
                    self.sweep_id,
                )


def _sweep_recorder(client: object, sweep_id: str) -> Any:
    """The sweep-level tracker record for ``sweeper run`` and ``sweeper.agent``; None when none is set,
    and None for agents of a ``sweeper server``, which keeps the record of its sweeps itself."""
    from sweeper.client import HttpCoordinator
    from sweeper.integrations.sweep import SweepRecorder

    coordinator = getattr(client, "_client", client)
    if isinstance(coordinator, HttpCoordinator):
        return None
    try:
        recorder = SweepRecorder.for_sweep(coordinator, sweep_id)
        if recorder is not None:
            recorder.start()
        return recorder
    except Exception as exc:  # trackers never stop a sweep
        log.error("sweep %s: tracker logging is off: %s: %s", sweep_id, type(exc).__name__, exc)
        return None


def _others_go_on(reason: str) -> str:
    """An agent's give-up line when the other agents here go on: its advice to start it again
    (meant for a lone agent) replaced."""
    if reason.endswith(GIVE_UP_ADVICE):
        return reason.removesuffix(GIVE_UP_ADVICE) + "the others go on"
    return f"{reason}; the others go on"
