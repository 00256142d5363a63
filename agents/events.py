"""What an agent tells its owner (the CLI) as trials start and end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sweeper.protocol import Assignment, TrialOutcome


@dataclass(frozen=True)
class TrialStarted:
    assignment: Assignment
    argv: tuple[str, ...]  # empty in function mode
    trial_dir: Path


@dataclass(frozen=True)
class TrialEnded:
    """The trial was reported to the coordinator with this outcome."""

    assignment: Assignment
    outcome: TrialOutcome
    seconds: float
    summary: dict[str, float] = field(default_factory=dict)  # last value of each metric


@dataclass(frozen=True)
class TrialAbandoned:
    """The trial was given up without a report (lease lost, coordinator unreachable)."""

    assignment: Assignment
    reason: str


AgentEvent = TrialStarted | TrialEnded | TrialAbandoned
