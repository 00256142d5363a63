"""Trial and sweep records: the data every part of sweeper passes around.

Plain frozen dataclasses and enums with no third-party imports, so the agent, the
strategies, the store and the CLI can all share them without pulling in anything heavy.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import operator
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class TrialState(enum.StrEnum):
    """Where a trial is in its life. Terminal states never change again."""

    RUNNING = "running"  # leased by an agent, which renews the lease
    FINISHED = "finished"  # the command exited 0 (or the function returned)
    FAILED = "failed"  # non-zero exit or an exception
    STOPPED = "stopped"  # ended on purpose: early termination, a user, Ctrl-C
    LOST = "lost"  # the agent stopped renewing its lease (killed, machine gone)

    @property
    def is_terminal(self) -> bool:
        return self is not TrialState.RUNNING

    @property
    def is_active(self) -> bool:
        return self is TrialState.RUNNING

    @property
    def gives_a_result(self) -> bool:
        """Whether a trial that ended so holds a result: a failed or lost trial's last value does
        not (its configuration runs again)."""
        return self in (TrialState.FINISHED, TrialState.STOPPED)


TRIAL_TRANSITIONS: Mapping[TrialState, frozenset[TrialState]] = {
    TrialState.RUNNING: frozenset(
        {TrialState.FINISHED, TrialState.FAILED, TrialState.STOPPED, TrialState.LOST}
    ),
    TrialState.FINISHED: frozenset(),
    TrialState.FAILED: frozenset(),
    TrialState.STOPPED: frozenset(),
    TrialState.LOST: frozenset(),
}


class SweepState(enum.StrEnum):
    """A sweep hands out trials only while RUNNING."""

    RUNNING = "running"
    PAUSED = "paused"  # no new trials; running ones go on; can resume
    FINISHED = "finished"  # the strategy has nothing left and every trial ended
    STOPPED = "stopped"  # no new trials; running ones finish (can resume)
    CANCELLED = "cancelled"  # no new trials; running ones are stopped

    @property
    def is_terminal(self) -> bool:
        return self in (SweepState.FINISHED, SweepState.CANCELLED)

    @property
    def hands_out_trials(self) -> bool:
        return self is SweepState.RUNNING


SWEEP_TRANSITIONS: Mapping[SweepState, frozenset[SweepState]] = {
    SweepState.RUNNING: frozenset(
        {SweepState.PAUSED, SweepState.FINISHED, SweepState.STOPPED, SweepState.CANCELLED}
    ),
    SweepState.PAUSED: frozenset(
        {SweepState.RUNNING, SweepState.STOPPED, SweepState.CANCELLED, SweepState.FINISHED}
    ),
    SweepState.STOPPED: frozenset({SweepState.RUNNING, SweepState.CANCELLED, SweepState.FINISHED}),
    # Resumed to run again the configurations that have no result (the coordinator checks there are some).
    SweepState.FINISHED: frozenset({SweepState.RUNNING}),
    SweepState.CANCELLED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One logged value. ``seq`` numbers the script's log calls, so a batch sent twice counts once."""

    name: str
    value: float
    step: int
    seq: int
    time: float


@dataclass(frozen=True)
class Sweep:
    id: str
    name: str | None
    method: str
    state: SweepState
    spec: Mapping[str, Any]  # the sweep file as given (W&B format plus our keys)
    seed: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Trial:
    """A trial as the store holds it. ``history`` is filled only when asked for."""

    id: int
    sweep_id: str
    number: int  # 1, 2, 3 ... within its sweep
    config: Mapping[str, Any]  # nested, exactly what the script sees
    state: TrialState
    created_at: float
    ended_at: float | None = None
    retry_of: int | None = None  # number of the trial this one repeats
    member: int | None = None  # population-based training: the population slot (0, 1, ...)
    restore_from: str | None = None  # checkpoint location the trial starts from (a folder or URL)
    agent: str | None = None
    host: str | None = None
    lease_id: str | None = None
    lease_expires_at: float | None = None
    exit_code: int | None = None
    stderr_tail: str | None = None
    stop_reason: str | None = None
    stop_requested: str | None = None  # a pending decision the agent has not carried out yet
    summary: Mapping[str, float] = field(default_factory=dict)  # last value of each metric
    history: tuple[MetricPoint, ...] | None = None

    def metric(self, name: str) -> float | None:
        return self.summary.get(name)

    @functools.cached_property
    def config_key(self) -> str:
        """:func:`config_key` of the config, made once per record: every lease compares the
        configurations of a sweep's whole history, whose ended trials the store keeps as read."""
        return config_key(self.config)

    def with_history(self, history: Iterable[MetricPoint]) -> Trial:
        """This record with ``history``, keeping the config key already made (the config is the same)."""
        copy = dataclasses.replace(self, history=tuple(history))
        if "config_key" in self.__dict__:
            copy.__dict__["config_key"] = self.__dict__["config_key"]
        return copy

    def points(self, name: str) -> list[MetricPoint]:
        """One metric's points, in (step, seq) order."""
        if self.history is None:
            raise ValueError("trial was loaded without its history")
        return sorted((p for p in self.history if p.name == name), key=lambda p: (p.step, p.seq))

    def curve(self, name: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, in step order."""
        return [(p.step, p.value) for p in self.points(name)]


class CountedTrials(list[Trial]):
    """A sweep's trials in number order, with how many are in each state.

    Every lease asks whether any trial failed or is running; the store, which keeps the counts
    as it reads, answers that here without a walk over a history of thousands of trials."""

    def __init__(self, trials: Iterable[Trial], states: Mapping[TrialState, int]) -> None:
        super().__init__(trials)
        self.states = states


_STATE = operator.attrgetter("state")


def count_states(trials: Sequence[Trial]) -> Mapping[TrialState, int]:
    """How many of ``trials`` are in each state (absent: none)."""
    if isinstance(trials, CountedTrials):
        return trials.states
    return Counter(map(_STATE, trials))


def _canonical(value: Any) -> Any:
    # 3.0 and 3 are the same configuration (a YAML "3e0" and a JSON 3 must not run twice).
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def config_key(config: Mapping[str, Any]) -> str:
    """A canonical string for a config, equal for equal configurations: sorted-keys JSON with
    integral floats written as ints, as W&B's grid deduplication does."""
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"), default=str)
