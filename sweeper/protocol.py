"""What an agent and a coordinator say to each other.

The embedded coordinator implements :class:`CoordinatorClient` directly; a remote one
is reached through an HTTP client with the same methods. Only standard-library types,
so an agent that imports this stays light.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

from sweeper.trials import MetricPoint, Sweep, SweepState, Trial, TrialState

if TYPE_CHECKING:
    from sweeper.spec import SweepSpec


@dataclass(frozen=True)
class AgentInfo:
    """Who is asking. ``name`` is unique per agent process (host, pid, slot)."""

    name: str
    host: str
    gpu: str | None = None


@dataclass(frozen=True)
class Assignment:
    """A trial to run now, under a lease the agent must keep renewing."""

    sweep_id: str
    trial_id: int
    trial_number: int
    lease_id: str
    lease_seconds: float
    config: Mapping[str, Any]
    command: Sequence[str]  # the sweep's command template, macros not yet expanded
    program: str | None
    metric_name: str | None
    # The sweep file's ``integrations:`` block, so every agent logs its trials to the same trackers.
    integrations: Mapping[str, Any] | None = None
    # Population-based training: the checkpoint to start from (a folder, relative to the agent's
    # working folder, or a URL), and where this trial's ``run.checkpoint_dir`` is published.
    restore_from: str | None = None
    checkpoint_to: str | None = None
    # The trial whose configuration this one runs again (it failed or was lost), if any.
    retry_of: int | None = None
    # A retry of lost attempts: the checkpoints they published, newest first. The trial resumes
    # from the first that exists, and starts from ``restore_from`` when none does.
    resume_from: Sequence[str] = ()
    # Checkpoints of the sweep that nothing can restore from any more: the agent removes them.
    discard_checkpoints: Sequence[str] = ()
    # The sweep file's W&B project and entity: a script's own wandb.init() logs there, as under W&B.
    project: str | None = None
    entity: str | None = None
    # The sweep's ``sweeper.trial_timeout`` and ``sweeper.stall_timeout``, in seconds (None: none).
    time_limit: float | None = None
    stall_limit: float | None = None


class NoTrialReason(enum.StrEnum):
    DONE = "done"  # the sweep has nothing more to run: exit
    WAIT = "wait"  # nothing now, maybe later (paused, running trials may need a retry): ask again
    STOPPED = "stopped"  # the sweep was stopped or cancelled: exit


@dataclass(frozen=True)
class NoTrial:
    reason: NoTrialReason
    message: str
    retry_after: float = 1.0

    @property
    def agent_should_exit(self) -> bool:
        return self.reason is not NoTrialReason.WAIT


@dataclass(frozen=True)
class Directive:
    """The coordinator's answer to a heartbeat or a metric report."""

    stop: bool = False
    reason: str | None = None


CONTINUE = Directive()


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended, as the agent saw it."""

    state: TrialState
    exit_code: int | None = None
    stderr_tail: str | None = None
    stop_reason: str | None = None

    @property
    def interrupted(self) -> bool:
        """Cut short because its agent was told to stop (:func:`interrupted_reason`). The
        coordinator takes such an end even after the trial's lease ran out (the agent could not
        say it while the coordinator was away): the trial then runs again without using an attempt."""
        return self.state is TrialState.LOST and is_interrupted(self.stop_reason)


def interrupted_reason(how: str) -> str:
    """The stop reason of trials an agent cut short because it was told to stop (``how``: the
    signal, or Ctrl-C). They end lost and run again, and do not count as an attempt."""
    return f"{INTERRUPTED} ({how})"


INTERRUPTED = "interrupted"


def is_interrupted(reason: str | None) -> bool:
    """Whether ``reason`` is one :func:`interrupted_reason` gave."""
    return (reason or "").startswith(INTERRUPTED + " (")


class LeaseLostError(Exception):
    """The trial's lease expired or moved on: the agent must abandon the trial, not report it."""


class SweepNotFoundError(LookupError):
    pass


#: The longest metric name the coordinator takes, embedded or over HTTP.
MAX_METRIC_NAME = 256


class InvalidPointsError(ValueError):
    """Points the coordinator refuses as they are: sending them again can never succeed. Its
    ``status`` is the HTTP server's answer to the same points, so agents treat both alike."""

    status = 422


def metric_name_problem(name: str) -> str | None:
    """Why the coordinator refuses ``name`` as a metric's name, or None: names are read by people
    and by tools (tables, CSV, trackers), so no empty or very long ones, no control characters."""
    if not name:
        return "a metric name must not be empty"
    if len(name) > MAX_METRIC_NAME:
        return f"a metric name has at most {MAX_METRIC_NAME} characters, this one {len(name)}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "a metric name must not hold control characters (a newline, a tab, ...)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "a metric name must be valid Unicode (no lone surrogates)"
    return None


_WANDB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # an entity or project (not '..')


def sweep_id_from(path: str) -> str:
    """The sweep id in a W&B sweep path (``entity/project/ID``, ``project/ID``, as ``wandb sweep``
    prints them and ``wandb agent`` takes them); a plain id as it is. A sweeper id holds no '/'."""
    *names, last = str(path).split("/")
    named = 1 <= len(names) <= 2 and all(_WANDB_NAME.fullmatch(name) for name in names)
    return last if named and last else str(path)


class TrialNotFoundError(LookupError):
    """No trial has this id; raised alike by the embedded store and the HTTP client."""


class CoordinatorClient(Protocol):
    def next_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | NoTrial: ...

    def unanswered_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | None:
        """For an agent that will not ask again: the trial its last ask leased, if that ask's
        answer never arrived (so the agent can end it, rather than leave its lease to run out)."""

    def heartbeat(self, trial_id: int, lease_id: str, *, interrupted: str | None = None) -> Directive:
        """Renew the lease. ``interrupted``: the agent was told to stop (:func:`interrupted_reason`)
        and is ending the trial; a lease that runs out before the end is reported keeps it."""

    def report_metrics(self, trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive: ...

    def finish_trial(self, trial_id: int, lease_id: str, outcome: TrialOutcome) -> None: ...


class CoordinatorService(CoordinatorClient, Protocol):
    """What the CLI needs from a coordinator: the embedded one and the HTTP client both provide it."""

    def create_sweep(self, spec: SweepSpec) -> Sweep: ...

    def get_sweep(self, sweep_id: str) -> Sweep: ...

    def list_sweeps(self) -> list[Sweep]: ...

    def set_sweep_state(self, sweep_id: str, state: SweepState) -> Sweep: ...

    def trials(
        self, sweep_id: str, *, with_history: bool = False, after: int = 0, limit: int | None = None
    ) -> list[Trial]:
        """The sweep's trials in number order: those numbered above ``after``, at most ``limit``
        (more only from a server older than pages, which sends them all)."""
        ...

    def trial_counts(self, sweep_id: str) -> dict[TrialState, int]:
        """How many of the sweep's trials are in each state (absent: none)."""
        ...

    def spec_of(self, sweep_id: str) -> SweepSpec: ...

    def best_trial(self, sweep_id: str) -> Trial | None: ...

    def close(self) -> None:
        """Let go of what the coordinator holds: kept connections, an embedded store."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
