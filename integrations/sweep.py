"""The sweep-level record: started, brought up to date as trials end, ended.

Runs in the process that runs the sweep's agents (``sweeper run``, ``sweeper.agent``) or next to
a coordinator; it reads the trials from the coordinator and hands the trackers a whole leaderboard
each time, so a tracker that was away catches up with one call.
"""

from __future__ import annotations

import logging
from typing import Any

from sweeper.integrations.base import Leaderboard, LeaderRow, SafeTracker, SweepInfo
from sweeper.integrations.session import trackers_for

log = logging.getLogger("sweeper.integrations")


class SweepRecorder:
    def __init__(self, coordinator: Any, sweep_id: str, trackers: list[SafeTracker]) -> None:
        self.coordinator = coordinator
        self.sweep_id = sweep_id
        self.trackers = trackers
        self.spec = coordinator.spec_of(sweep_id)

    @classmethod
    def for_sweep(cls, coordinator: Any, sweep_id: str) -> SweepRecorder | None:
        """A recorder when the sweep names trackers and the coordinator can list trials; else None."""
        if not all(hasattr(coordinator, m) for m in ("spec_of", "trials", "get_sweep")):
            return None
        spec = coordinator.spec_of(sweep_id)
        trackers = trackers_for(sweep_id, spec.raw.get("integrations"))
        return cls(coordinator, sweep_id, trackers) if trackers else None

    def start(self) -> None:
        sweep = self.coordinator.get_sweep(self.sweep_id)
        metric = self.spec.metric
        info = SweepInfo(
            sweep_id=self.sweep_id,
            method=self.spec.method,
            spec=sweep.spec,
            name=self.spec.name,
            metric_name=metric.name if metric else None,
            goal=metric.goal.value if metric else "minimize",
        )
        for tracker in self.trackers:
            tracker.sweep_started(info)

    def update(self) -> None:
        try:
            board = self.board()
        except Exception as exc:  # the coordinator is busy or away: the next update catches up
            log.warning("sweep %s: cannot read the trials for the trackers: %s", self.sweep_id, exc)
            return
        for tracker in self.trackers:
            tracker.leaderboard(board)

    def on_event(self, event: object) -> None:
        """Hook for agent events: the leaderboard changes when a trial ends."""
        from sweeper.agents.events import TrialAbandoned, TrialEnded

        if isinstance(event, TrialEnded | TrialAbandoned):
            self.update()

    def finish(self, state: str | None = None) -> None:
        """The last update, then the end; ``state`` overrides the sweep's (``stopped`` on Ctrl-C)."""
        self.update()
        if state is None:
            try:
                state = self.coordinator.get_sweep(self.sweep_id).state.value
            except Exception:
                state = "unknown"
        for tracker in self.trackers:
            tracker.sweep_ended(self.sweep_id, state)

    def board(self) -> Leaderboard:
        metric = self.spec.metric
        ended = [t for t in self.coordinator.trials(self.sweep_id) if t.state.is_terminal]
        ended.sort(key=lambda t: (t.ended_at or 0.0, t.number))
        rows = tuple(
            LeaderRow(
                number=t.number,
                state=t.state.value,
                value=t.metric(metric.name) if metric else None,
                config=t.config,
                ended_at=t.ended_at,
            )
            for t in ended
        )
        return Leaderboard(
            sweep_id=self.sweep_id,
            metric_name=metric.name if metric else None,
            goal=metric.goal.value if metric else "minimize",
            rows=rows,
        )
