"""The agent's trial hook that feeds the trackers named in each assignment's ``integrations`` block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.agents.metrics import points_from_record
from sweeper.agents.trialdir import TrialDir
from sweeper.integrations.base import TrialEnd, TrialInfo
from sweeper.integrations.session import trackers_for

from sweeper.protocol import Assignment, TrialOutcome


class TrackerHook:
    """Starts, feeds and ends each trial's run in every configured tracker. Only a trial's start
    waits, for the runs of the trackers that answer, and not once the trial is stopping (see
    :meth:`SafeTracker.env_of`)."""

    def __init__(self) -> None:
        self._trials: dict[int, TrialInfo] = {}
        self._lock = threading.Lock()

    def on_start(
        self,
        assignment: Assignment,
        trial_dir: TrialDir,
        env: Mapping[str, str],
        stopping: threading.Event | None = None,
    ) -> Mapping[str, str]:
        trackers = trackers_for(assignment.sweep_id, assignment.integrations)
        if not trackers:
            return {}
        tags = {"host": socket.gethostname()}
        if env.get("CUDA_VISIBLE_DEVICES"):
            tags["gpu"] = env["CUDA_VISIBLE_DEVICES"]
        info = TrialInfo(
            sweep_id=assignment.sweep_id,
            trial_id=assignment.trial_id,
            trial_number=assignment.trial_number,
            config=assignment.config,
            tags=tags,
            trial_dir=trial_dir.path,
        )
        with self._lock:
            self._trials[assignment.trial_id] = info
        started = [(tracker, tracker.start_trial(info)) for tracker in trackers]
        # One wait for all of them: each tracker makes the trial's run meanwhile.
        deadline = time.monotonic() + max(tracker.start_timeout for tracker in trackers)
        extra: dict[str, str] = {}
        for tracker, start in started:
            extra.update(tracker.env_of(start, deadline, stopping))
        return extra

    def on_metrics(self, assignment: Assignment, records: Sequence[Mapping[str, Any]]) -> None:
        info = self._trials.get(assignment.trial_id)
        if info is None:
            return
        by_source: dict[str, list] = {}
        for record in records:
            by_source.setdefault(str(record.get("source") or "sweeper"), []).extend(
                points_from_record(record)
            )
        for tracker in trackers_for(assignment.sweep_id, assignment.integrations):
            for source, points in by_source.items():
                tracker.trial_metrics(info, points, source)

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None:
        with self._lock:
            info = self._trials.pop(assignment.trial_id, None)
        if info is None:
            return
        logs = tuple(p for p in (trial_dir.stdout_path, trial_dir.stderr_path) if p.exists())
        end = TrialEnd(
            state=outcome.state,
            exit_code=outcome.exit_code,
            stop_reason=outcome.stop_reason,
            logs=logs,
            artifacts=trial_dir.marked_artifacts(),
        )
        for tracker in trackers_for(assignment.sweep_id, assignment.integrations):
            tracker.trial_ended(info, end)
