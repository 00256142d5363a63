"""The tracker-adapter interface: what an adapter (MLflow, W&B) implements, and what it is given.

Nothing calls an adapter directly: each sits behind a :class:`sweeper.integrations.safe.SafeTracker`,
which keeps a failing or slow tracker away from the trials.

Standard library only: adapters import their tracker's package themselves, when they are built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.trials import MetricPoint, TrialState


@dataclass(frozen=True)
class SweepInfo:
    sweep_id: str
    method: str
    spec: Mapping[str, Any]  # the sweep file as given
    name: str | None = None
    metric_name: str | None = None
    goal: str = "minimize"


@dataclass(frozen=True)
class TrialInfo:
    sweep_id: str
    trial_id: int
    trial_number: int
    config: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)  # host, agent, gpu ...
    trial_dir: Path | None = None


@dataclass(frozen=True)
class TrialEnd:
    state: TrialState
    exit_code: int | None = None
    stop_reason: str | None = None
    logs: tuple[Path, ...] = ()  # stdout/stderr files to attach
    artifacts: tuple[Path, ...] = ()  # files the script marked with run.log_artifact
    summary: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaderRow:
    """One ended trial, as the sweep-level record shows it."""

    number: int
    state: str
    value: float | None  # the sweep metric's final value
    config: Mapping[str, Any]
    ended_at: float | None = None
    stop_reason: str | None = None  # why it was stopped or lost


@dataclass(frozen=True)
class Leaderboard:
    sweep_id: str
    metric_name: str | None
    goal: str
    rows: tuple[LeaderRow, ...]  # in the order the trials ended

    def ranked(self) -> list[LeaderRow]:
        """Results best first, then the rest (failed and lost trials, NaN and infinities) as they ended."""
        sign = 1.0 if self.goal == "minimize" else -1.0
        scored = [r for r in self.rows if _a_result(r)]
        rest = [r for r in self.rows if r not in scored]
        return sorted(scored, key=lambda r: sign * r.value) + rest  # type: ignore[operator]

    def best_so_far(self) -> list[tuple[int, float]]:
        """(trial number, best value among the trials ended until then), in end order; NaN and
        infinities are never the best (a loss of -inf is a diverged run), nor a failed or lost
        trial's last value."""
        sign = 1.0 if self.goal == "minimize" else -1.0
        best: float | None = None
        out = []
        for row in self.rows:
            if _a_result(row):
                if best is None or sign * row.value < sign * best:
                    best = row.value
            if best is not None:
                out.append((row.number, best))
        return out


def _a_result(row: LeaderRow) -> bool:
    """A value that is the trial's result: finite, of a trial that finished or was stopped early
    (a failed or lost trial's configuration runs again)."""
    return TrialState(row.state).gives_a_result and row.value is not None and math.isfinite(row.value)


#: Sweep states that hand out trials again without being resumed: a record that ends in one of
#: these ends only here (``--count`` reached); the sweep goes on.
GOING_ON = ("running", "paused")


class TrackerRefusedError(Exception):
    """A tracker's answer to its settings that will not change by itself (see :meth:`Tracker.check`)."""


class Tracker:
    """What an adapter implements. Every method may raise; the SafeTracker it sits behind deals with it.

    ``trial_started`` returns environment variables the trial's process should get (for a script
    that logs to the tracker itself). Metrics with ``source`` equal to :attr:`name` were logged by
    the script to this tracker already and must not be logged again.

    ``trial_started`` runs on a thread of its own, beside the other calls (another trial's end,
    a leaderboard): what it shares with them needs a lock. Each trial's calls come in order (its
    start, its metrics, its end), and a trial's start after its sweep's ``sweep_started``.
    """

    name = "tracker"
    #: One line telling a person what to check when calls fail.
    help = "check the tracker's settings"
    #: Variables a trial gets when its start did not get through (``trial_started``'s answer is
    #: the whole env otherwise): where the script's own logging goes, and the process's own values
    #: of settings the adapter changed for itself.
    always_env: Mapping[str, str] = {}

    def sweep_started(self, sweep: SweepInfo) -> None: ...

    def leaderboard(self, board: Leaderboard) -> None: ...

    def sweep_ended(self, sweep_id: str, state: str) -> None: ...

    def trial_started(self, trial: TrialInfo) -> Mapping[str, str]:
        return {}

    def trial_metrics(self, trial: TrialInfo, points: Sequence[MetricPoint], source: str) -> None: ...

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None: ...

    def is_transient(self, exc: BaseException) -> bool:
        """True when a retry may succeed (network, server down); False drops the call."""
        return isinstance(exc, OSError | TimeoutError)

    def failure(self, exc: BaseException) -> str:
        """A failed call's error in one short line, for the line that says the tracker is down."""
        text = str(exc)
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"

    def refusal(self, exc: BaseException) -> str | None:
        """What to do about a failed call that the tracker refused for its settings (credentials,
        permissions, address), which a retry may cure only once someone fixes them; None for
        a failure that looks like the tracker being down."""
        return None

    def check(self) -> None:
        """Ask the tracker whether it takes these settings, before a sweep runs: raise for an answer
        that will not change by itself (credentials refused, no tracking API at that address). A
        tracker that does not answer passes: it may be up by the time trials end."""

    def close(self) -> None: ...
