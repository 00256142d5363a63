"""A tracker that is down, refuses, or comes back: trials never fail, nor wait on a tracker that is
down; records catch up."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from sweeper.agents.events import TrialEnded, TrialStarted
from sweeper.integrations.base import Leaderboard, SafeTracker, Tracker, TrialEnd, TrialInfo
from trackers_support import TRIAL_SCRIPT, MlflowServer, run_sweep

from sweeper.trials import MetricPoint, TrialState

TRIAL = TrialInfo(sweep_id="sw", trial_id=1, trial_number=1, config={"lr": 0.1})


class Flaky(Tracker):
    """Refuses with ConnectionError until ``up`` is set; records what got through, in order."""

    name = "Flaky"
    help = "start the flaky server"

    def __init__(self) -> None:
        self.up = threading.Event()
        self.calls: list[str] = []
        self.boards: list[int] = []

    def _check(self) -> None:
        if not self.up.is_set():
            raise ConnectionError("connection refused")

    def trial_started(self, trial: TrialInfo) -> dict[str, str]:
        self._check()
        self.calls.append("start")
        return {"FLAKY_RUN": "r1"}

    def trial_metrics(self, trial: TrialInfo, points, source: str) -> None:  # type: ignore[no-untyped-def]
        self._check()
        self.calls.append(f"metrics:{points[0].step}")

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        self._check()
        self.calls.append(f"end:{end.state.value}")

    def leaderboard(self, board: Leaderboard) -> None:
        self._check()
        self.boards.append(len(board.rows))


def point(step: int) -> MetricPoint:
    return MetricPoint(name="loss", value=1.0 / (step + 1), step=step, seq=step, time=0.0)


def test_down_tracker_is_reported_once_buffers_and_catches_up(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    safe = SafeTracker(flaky, start_timeout=0.2, base_backoff=0.01, max_backoff=0.05)
    with caplog.at_level(logging.WARNING, logger="sweeper.integrations"):
        assert safe.trial_started(TRIAL) == {}  # down: the trial starts without the tracker's variables
        for step in range(5):
            safe.trial_metrics(TRIAL, [point(step)], "sweeper")
        safe.trial_ended(TRIAL, TrialEnd(state=TrialState.FINISHED))
        assert not safe.flush(timeout=0.3)  # nothing gets through while it is down
        assert flaky.calls == [] and safe.down
        flaky.up.set()
        assert safe.flush(timeout=30)
    assert flaky.calls == ["start", *(f"metrics:{s}" for s in range(5)), "end:finished"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unreachable" in errors[0].getMessage()
    assert "start the flaky server" in errors[0].getMessage()  # says what to do
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    safe.close(timeout=5)


class Slow(Flaky):
    """Answers each call after ``delay`` seconds: with a refusal until ``up`` is set."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def _check(self) -> None:
        time.sleep(self.delay)
        super()._check()


def test_a_trial_waits_for_a_slow_tracker_s_run_but_not_once_it_is_down() -> None:
    slow = Slow(delay=0.5)
    slow.up.set()
    safe = SafeTracker(slow, start_timeout=30, base_backoff=0.01, max_backoff=0.05)
    # Slow, but up: the trial gets the tracker's variables, so the script logs into the trial's run.
    assert safe.trial_started(TRIAL) == {"FLAKY_RUN": "r1"}
    slow.up.clear()
    started = time.monotonic()
    # The start waits behind the previous trial's end; that fails and marks the tracker down: the
    # trial starts then, not once the 30 s are up.
    safe.trial_ended(TRIAL, TrialEnd(state=TrialState.FINISHED))
    assert safe.trial_started(TRIAL) == {}
    assert safe.down and time.monotonic() - started < 15
    safe.close(timeout=0.1)


def test_waiting_leaderboards_collapse_into_the_newest() -> None:
    flaky = Flaky()
    safe = SafeTracker(flaky, base_backoff=0.01, max_backoff=0.05)
    for n in range(1, 6):
        rows = tuple(
            __import__("sweeper.integrations.base", fromlist=["LeaderRow"]).LeaderRow(i, "finished", 1.0, {})
            for i in range(n)
        )
        safe.leaderboard(Leaderboard("sw", "loss", "minimize", rows))
    flaky.up.set()
    assert safe.flush(timeout=30)
    assert flaky.boards[-1] == 5 and len(flaky.boards) <= 2  # the head that was being tried, then the newest
    safe.close(timeout=5)


def test_the_bound_drops_metric_batches_first() -> None:
    flaky = Flaky()
    safe = SafeTracker(flaky, max_pending=4, base_backoff=0.01, max_backoff=0.05)
    safe.trial_started(TRIAL)
    for step in range(10):
        safe.trial_metrics(TRIAL, [point(step)], "sweeper")
    safe.trial_ended(TRIAL, TrialEnd(state=TrialState.FAILED))
    flaky.up.set()
    assert safe.flush(timeout=30)
    assert flaky.calls[0] == "start" and flaky.calls[-1] == "end:failed"
    assert safe.dropped > 0 and len(flaky.calls) <= 5
    safe.close(timeout=5)


def test_mlflow_server_killed_mid_sweep_fails_no_trial_and_runs_complete(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    program = tmp_path / "train.py"
    program.write_text(TRIAL_SCRIPT)
    restarted = threading.Event()

    def on_event(event: object) -> None:
        # Kill the server as the second trial starts; bring it back (same port, same backend)
        # once the third has ended, so trials 2 and 3 run entirely while it is down.
        if isinstance(event, TrialStarted) and event.assignment.trial_number == 2:
            server.stop()
        if isinstance(event, TrialEnded) and event.assignment.trial_number == 3 and not restarted.is_set():
            server.start()
            restarted.set()

    sweep = {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"lr": {"values": [0.1, 0.2, 0.3, 0.4]}},
        "integrations": {"mlflow": {"tracking_uri": server.uri, "experiment": "outage"}},
    }
    try:
        _, sweep_id, trials = run_sweep(tmp_path, sweep, program, agents=1, on_event=on_event)
        assert restarted.is_set()
        assert [t.state for t in trials] == [TrialState.FINISHED] * 4  # the outage failed no trial
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        runs = client.search_runs([exp.experiment_id])
        children = {
            r.data.tags["sweeper.trial_number"]: r for r in runs if r.data.tags["sweeper.role"] == "trial"
        }
        assert sorted(children) == ["1", "2", "3", "4"]
        for trial in trials:
            child = children[str(trial.number)]
            assert child.info.status == "FINISHED"
            history = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss"))
            assert history == trial.curve("loss")
            assert {a.path for a in client.list_artifacts(child.info.run_id, "logs")} == {
                "logs/stdout.log",
                "logs/stderr.log",
            }
        (parent,) = [r for r in runs if r.data.tags["sweeper.role"] == "sweep"]
        assert parent.info.status == "FINISHED"
        best = client.get_metric_history(parent.info.run_id, "best_loss")
        assert sorted(m.step for m in best) == [t.number for t in trials]
    finally:
        server.stop()


def test_a_tracker_that_cannot_start_names_the_sweep_file_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow")
    from sweeper.integrations.session import trackers_for

    monkeypatch.chdir(tmp_path)
    block = {"mlflow": {"tracking_uri": "htp//nowhere", "experiment": "e"}}  # not a URL MLflow takes
    with caplog.at_level(logging.ERROR, logger="sweeper.integrations"):
        assert trackers_for("s-bad-uri", block) == []
    (line,) = [r.getMessage() for r in caplog.records if "logging is off" in r.getMessage()]
    assert line.startswith(
        "mlflow logging is off for sweep s-bad-uri "
        "(integrations.mlflow.tracking_uri='htp//nowhere', integrations.mlflow.experiment='e'): "
    ), line


def test_a_password_in_a_tracker_uri_is_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("mlflow")
    from sweeper.integrations.session import trackers_for

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR, logger="sweeper.integrations"):
        uri = "ftp://bob:s3cret@nowhere/x?token=t0ken&b=1"
        assert trackers_for("s-secret", {"mlflow": {"tracking_uri": uri}}) == []
    (line,) = [r.getMessage() for r in caplog.records if "logging is off" in r.getMessage()]
    assert "ftp://***@nowhere/x?token=***&b=1" in line, line
    assert "s3cret" not in line and "bob" not in line and "t0ken" not in line, line
