"""The sweep-level record: started, brought up to date as trials end, ended.

Runs in the process that runs the sweep's agents (``sweeper run``, ``sweeper.agent``), or in
``sweeper server`` for every sweep it serves (:class:`SweepRecords`); it reads the trials from the
coordinator and hands the trackers a whole leaderboard each time, so a tracker that was away
catches up with one call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sweeper.integrations.base import Leaderboard, LeaderRow, SweepInfo
from sweeper.integrations.safe import SafeTracker
from sweeper.integrations.session import close_all, close_sweep, trackers_for, use_sweep

from sweeper.spec.integrations import tracker_settings
from sweeper.trials import SweepState

log = logging.getLogger("sweeper.integrations")
# How long an ended sweep's last records may take to reach its trackers; other sweeps' records wait.
_CLOSE_ENDED = 10.0


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
        trackers = trackers_for(sweep_id, tracker_settings(spec))
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
                stop_reason=t.stop_reason,
            )
            for t in ended
        )
        return Leaderboard(
            sweep_id=self.sweep_id,
            metric_name=metric.name if metric else None,
            goal=metric.goal.value if metric else "minimize",
            rows=rows,
        )


class SweepRecords:
    """The sweep-level records of every sweep a coordinator serves: what ``sweeper server`` runs.

    :meth:`changed` is the coordinator's ``on_sweep_changed`` listener: it notes the sweep's id and
    returns, so no request waits on a tracker. One background thread does the rest: the first time
    a sweep changes it builds the sweep's :class:`SweepRecorder` (none for a sweep without an
    ``integrations`` block) and starts it; each change brings the record up to date (several
    changes to one sweep while the thread is busy become one update); once the sweep is finished or
    cancelled and no trial of it runs, its record ends. A stopped sweep's record ends as stopped
    once no trial of it runs, and runs again when the sweep is resumed.
    """

    def __init__(self) -> None:
        self._coordinator: Any = None
        self._recorders: dict[str, SweepRecorder | None] = {}
        self._closed: set[str] = set()  # sweeps whose record ended (finished, stopped, cancelled)
        self._waiting: dict[str, None] = {}  # sweep ids in the order they changed, each once
        self._busy = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="sweeper-records", daemon=True)

    def start(self, coordinator: Any) -> None:
        """Begin recording; changes noted before this wait for it."""
        self._coordinator = coordinator
        self._thread.start()

    def changed(self, sweep_id: str) -> None:
        with self._cond:
            if not self._closing:
                self._waiting[sweep_id] = None
                self._cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every noted change has been handed to the trackers; False if the time ran out."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Handle the changes noted so far, then send what waits for the trackers (for at most
        ``timeout`` seconds each) and close them."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        close_all(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                while not self._waiting and not self._closing:
                    self._cond.notify_all()
                    self._cond.wait()
                if not self._waiting:
                    self._cond.notify_all()
                    return
                sweep_id = next(iter(self._waiting))
                del self._waiting[sweep_id]
                self._busy = True
            try:
                self._bring_up_to_date(sweep_id)
            except Exception as exc:  # the store is busy or away: the sweep's next change catches up
                log.warning(
                    "sweep %s: cannot update its tracker record: %s: %s", sweep_id, type(exc).__name__, exc
                )

    def _bring_up_to_date(self, sweep_id: str) -> None:
        if sweep_id in self._closed:
            # A late change (a lost lease) must not reopen it; a resume (of a stopped sweep, or of
            # a finished one to run its failed configurations) does.
            if self._coordinator.get_sweep(sweep_id).state not in (SweepState.RUNNING, SweepState.PAUSED):
                return
            self._closed.discard(sweep_id)
        if sweep_id not in self._recorders:
            recorder = SweepRecorder.for_sweep(self._coordinator, sweep_id)
            if recorder is not None:
                # Held until the close_sweep below: agents of the sweep that run in this process
                # (a notebook, a test) closing theirs leave the record's trackers open.
                use_sweep(sweep_id)
                recorder.start()
            self._recorders[sweep_id] = recorder
        recorder = self._recorders[sweep_id]
        if recorder is None:
            return
        state = self._coordinator.get_sweep(sweep_id).state
        quiet = not any(t.state.is_active for t in self._coordinator.trials(sweep_id))
        if quiet and (state.is_terminal or state is SweepState.STOPPED):
            recorder.finish(state.value)
            self._closed.add(sweep_id)
            del self._recorders[sweep_id]  # nothing more to hold for it
            # Its trackers (and their threads) go now, not when the server stops: a server runs
            # for months, one sweep after another.
            close_sweep(sweep_id, _CLOSE_ENDED)
        else:
            recorder.update()
