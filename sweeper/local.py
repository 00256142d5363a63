"""Coordinator and agents in one process tree: what ``sweeper run`` and ``sweeper.agent`` use.

Each local agent is a thread driving its own trial process (or calling a function), all of
them talking to one in-process :class:`~sweeper.coordinator.Coordinator`.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sweeper.agents import Agent, AgentEvent
from sweeper.protocol import (
    AgentInfo,
    Assignment,
    CoordinatorClient,
    Directive,
    NoTrial,
    NoTrialReason,
    TrialOutcome,
)
from sweeper.trials import MetricPoint


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
                return NoTrial(NoTrialReason.DONE, f"the requested count of {self._count} trials has run")
            result = self._client.next_trial(sweep_id, agent)
            if isinstance(result, Assignment):
                self._given += 1
            return result

    def heartbeat(self, trial_id: int, lease_id: str) -> Directive:
        return self._client.heartbeat(trial_id, lease_id)

    def report_metrics(self, trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive:
        return self._client.report_metrics(trial_id, lease_id, points)

    def finish_trial(self, trial_id: int, lease_id: str, outcome: TrialOutcome) -> None:
        self._client.finish_trial(trial_id, lease_id, outcome)


def agent_info(slot: int, gpu: str | None = None) -> AgentInfo:
    host = socket.gethostname()
    return AgentInfo(name=f"{host}:{os.getpid()}:{slot}", host=host, gpu=gpu)


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
    _agents: list[Agent] = field(default_factory=list, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _reasons: list[str] = field(default_factory=list, init=False)
    _errors: list[BaseException] = field(default_factory=list, init=False)

    def start(self) -> None:
        budget = TrialBudget(self.client, self.count)
        for slot in range(self.agents):
            agent = Agent(
                budget,
                self.sweep_id,
                info=agent_info(slot),
                workdir=self.workdir,
                function=self.function,
                program_override=self.program_override,
                grace_period=self.grace_period,
                on_event=self.on_event,
            )
            thread = threading.Thread(target=self._run, args=(agent,), name=f"agent-{slot}", daemon=True)
            self._agents.append(agent)
            self._threads.append(thread)
            thread.start()

    def _run(self, agent: Agent) -> None:
        try:
            self._reasons.append(agent.run())
        except BaseException as exc:  # surfaced by wait(), never lost in a thread
            self._errors.append(exc)

    def wait(self, poll: float = 0.2) -> list[str]:
        """Join the agents, staying responsive to KeyboardInterrupt in the main thread."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(poll)
        if self._errors:
            raise self._errors[0]
        return list(self._reasons)

    def stop(self, reason: str) -> None:
        for agent in self._agents:
            agent.stop(reason)
