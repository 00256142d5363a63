"""A tracker that is down, refuses, or comes back: trials never fail, nor wait on a tracker that is
down; records catch up."""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from process_support import wait_until
from sweeper.agents.events import TrialEnded, TrialStarted
from sweeper.integrations.base import Leaderboard, SweepInfo, Tracker, TrialEnd, TrialInfo
from sweeper.integrations.safe import SafeTracker
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


class _CountingCondition(threading.Condition):
    waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        _CountingCondition.waits += 1
        return super().wait(timeout)


def test_an_idle_tracker_s_threads_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing to send, the lanes wait for a call: they do not wake each other (a lane that
    woke the other on each idle look kept a CPU core busy for as long as a sweep ran)."""
    with monkeypatch.context() as patched:
        patched.setattr(threading, "Condition", _CountingCondition)
        safe = SafeTracker(Flaky())
    flaky = safe.tracker
    flaky.up.set()  # type: ignore[attr-defined]
    safe.trial_metrics(TRIAL, [point(0)], "sweeper")
    assert safe.flush(10)
    _CountingCondition.waits = 0
    time.sleep(0.5)
    assert _CountingCondition.waits <= 2  # at most a lane settling; a spin is thousands
    safe.trial_metrics(TRIAL, [point(1)], "sweeper")  # and a call still wakes its lane
    assert safe.flush(10) and flaky.calls == ["metrics:0", "metrics:1"]  # type: ignore[attr-defined]
    safe.close(5)


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


class Gated(Tracker):
    """Records its calls in the order they run; a call named in ``gates`` waits for its event."""

    name = "Gated"

    def __init__(self, *gated: str) -> None:
        self.gates = {label: threading.Event() for label in gated}
        self.calls: list[str] = []

    def _call(self, label: str) -> None:
        if label in self.gates:
            assert self.gates[label].wait(30), f"{label} was never let through"
        self.calls.append(label)

    def sweep_started(self, sweep: SweepInfo) -> None:
        self._call(f"sweep {sweep.sweep_id}")

    def trial_started(self, trial: TrialInfo) -> dict[str, str]:
        self._call(f"start {trial.trial_number}")
        return {"RUN": str(trial.trial_number)}

    def trial_metrics(self, trial: TrialInfo, points, source: str) -> None:  # type: ignore[no-untyped-def]
        self._call(f"metrics {trial.trial_number}")

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        self._call(f"end {trial.trial_number}")


def trial(number: int) -> TrialInfo:
    return TrialInfo(sweep_id="sw", trial_id=number, trial_number=number, config={})


def test_a_trials_start_goes_beside_another_trials_end_not_behind_it() -> None:
    gated = Gated("end 1")  # the first trial's end uploads its checkpoint for as long as the test likes
    safe = SafeTracker(gated)
    safe.trial_started(trial(1))
    safe.trial_ended(trial(1), TrialEnd(state=TrialState.FINISHED))
    assert safe.trial_started(trial(2)) == {"RUN": "2"}
    assert gated.calls == ["start 1", "start 2"]
    gated.gates["end 1"].set()
    assert safe.flush(timeout=30)
    assert gated.calls == ["start 1", "start 2", "end 1"]
    safe.close(timeout=5)


def test_a_trials_calls_wait_for_its_start_and_a_start_for_its_sweeps_record() -> None:
    gated = Gated("sweep sw", "start 1")
    safe = SafeTracker(gated)
    safe.sweep_started(SweepInfo(sweep_id="sw", method="grid", spec={}))
    started = safe.start_trial(trial(1))  # the trial's run is nested in the sweep's: made after it
    safe.trial_metrics(trial(1), [point(0)], "sweeper")
    safe.trial_ended(trial(1), TrialEnd(state=TrialState.FINISHED))
    time.sleep(0.3)
    assert gated.calls == [] and not started.done()
    gated.gates["sweep sw"].set()
    assert not safe.flush(timeout=0.3)
    assert gated.calls == ["sweep sw"]  # the metrics and the end wait for the start
    gated.gates["start 1"].set()
    assert safe.flush(timeout=30)
    assert gated.calls == ["sweep sw", "start 1", "metrics 1", "end 1"]
    safe.close(timeout=5)


class SlowUploads(Gated):
    """Starts answer; each trial's end times out until ``up`` is set, as an upload on a slow link."""

    def __init__(self) -> None:
        super().__init__()
        self.up = threading.Event()

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        if not self.up.is_set():
            raise TimeoutError("the upload timed out")
        super().trial_ended(trial, end)


def test_ends_that_time_out_hold_up_no_start_and_are_said_once(caplog: pytest.LogCaptureFixture) -> None:
    uploads = SlowUploads()
    safe = SafeTracker(uploads, base_backoff=0.01, max_backoff=0.05)
    with caplog.at_level(logging.WARNING, logger="sweeper.integrations"):
        assert safe.trial_started(trial(1)) == {"RUN": "1"}
        safe.trial_ended(trial(1), TrialEnd(state=TrialState.FINISHED))
        assert wait_until(lambda: safe.down)
        for number in (2, 3, 4):  # each start gets its run, though the first end still fails
            assert safe.trial_started(trial(number)) == {"RUN": str(number)}
        uploads.up.set()
        assert safe.flush(timeout=30)
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "unreachable" in m] == [
        "Gated is unreachable (TimeoutError: the upload timed out). Trials go on; their records are kept "
        "(up to 10000 calls) and sent when it is back. check the tracker's settings"
    ]
    (back,) = [m for m in said if "reachable again" in m]
    assert back.startswith("Gated is reachable again after ") and back.endswith("; sending 0 waiting call(s)")
    assert uploads.calls == ["start 1", "start 2", "start 3", "start 4", "end 1"]
    safe.close(timeout=5)


def test_closing_gives_up_on_calls_that_wait_for_a_start_the_tracker_never_took(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = Flaky()
    safe = SafeTracker(down, base_backoff=0.01, max_backoff=0.05)
    safe.start_trial(TRIAL)
    safe.trial_metrics(TRIAL, [point(0)], "sweeper")
    safe.trial_ended(TRIAL, TrialEnd(state=TrialState.FINISHED))
    with caplog.at_level(logging.WARNING, logger="sweeper.integrations"):
        safe.close(timeout=0.5)
    gave_up = [r.getMessage() for r in caplog.records if "gave up on" in r.getMessage()]
    assert sorted(gave_up) == [
        "Flaky: gave up on 1 call(s) at exit: the tracker stayed unreachable. start the flaky server",
        "Flaky: gave up on 2 call(s) at exit: the tracker stayed unreachable. start the flaky server",
    ]
    assert not [r for r in caplog.records if "not sent at exit" in r.getMessage()]  # no thread was left


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


def test_mlflow_server_killed_mid_sweep_fails_no_trial_and_runs_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
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
        downs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MLflow is unreachable")]
        assert downs  # said once per outage: a call cut short as the server went can make two
        for down in downs:  # what failed, in a line: not urllib3's whole story, nor credentials
            assert re.match(
                rf"MLflow is unreachable \(API request to {server.uri}/api/\S+ failed: "
                r"(\[Errno 111\] Connection refused|Connection broken: \w+|Connection aborted)\)"
                r"\. Trials go on; ",
                down,
            ), down
            assert down.endswith(f"check that the MLflow tracking server at {server.uri} is up"), down
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


class HungServer:
    """A TCP server that takes connections and never answers, as a tracking server that hangs does."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.connected = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._take, daemon=True).start()

    def _take(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            self._held.append(conn)
            self.connected.set()

    def close(self) -> None:
        self._server.close()
        for conn in self._held:
            conn.close()


def test_a_stop_while_a_trial_waits_for_a_hung_mlflow_server_ends_the_wait(tmp_path: Path) -> None:
    """Ctrl-C while a trial's start waits for its MLflow run, from a server that hangs: the trial is
    given up at once, without its script ever starting, and runs again later."""
    pytest.importorskip("mlflow")
    from sweeper.agents import Agent
    from sweeper.integrations.session import close_sweep

    from sweeper.coordinator import Coordinator
    from sweeper.protocol import AgentInfo, interrupted_reason
    from sweeper.spec import parse_sweep
    from sweeper.store import open_store

    hung = HungServer()
    program = tmp_path / "marks.py"
    program.write_text("open('started', 'w').close()\n")
    sweep = {
        "method": "grid",
        "program": str(program),
        "parameters": {"lr": {"values": [0.1]}},
        "integrations": {"mlflow": {"tracking_uri": hung.uri, "experiment": "hung"}},
    }
    events: list[object] = []
    with open_store(f"sqlite:///{tmp_path / 'sweeper.db'}") as store:
        coordinator = Coordinator(store)
        sweep_id = coordinator.create_sweep(parse_sweep(sweep)).id
        agent = Agent(
            coordinator,
            sweep_id,
            info=AgentInfo(name="a", host="localhost"),
            workdir=tmp_path,
            count=1,
            on_event=events.append,
        )
        runner = threading.Thread(target=agent.run)
        runner.start()
        try:
            assert hung.connected.wait(60)  # the tracker is making the trial's run: the start waits
            agent.stop(interrupted_reason("Ctrl-C"))
            runner.join(60)
            assert not runner.is_alive()
        finally:
            hung.close()
            close_sweep(sweep_id, timeout=0.5)
        assert not any(isinstance(e, TrialStarted) for e in events), events
        assert not (tmp_path / "started").exists()
        assert [(t.number, t.state) for t in coordinator.trials(sweep_id)] == [(1, TrialState.LOST)]


def test_closing_says_what_it_waits_for_only_when_the_tracker_keeps_it_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sweeper.integrations"):
        answers = Flaky()
        answers.up.set()
        safe = SafeTracker(answers)
        safe.trial_ended(TRIAL, TrialEnd(state=TrialState.FINISHED))
        safe.close(timeout=5)
        assert answers.calls == ["end:finished"]
        assert not [r for r in caplog.records if "not sent yet" in r.getMessage()]

        down = Flaky()
        safe = SafeTracker(down, base_backoff=0.01, max_backoff=0.05)
        safe.trial_started(TRIAL)
        safe.trial_ended(TRIAL, TrialEnd(state=TrialState.FINISHED))
        safe.close(timeout=2.5)
    (said,) = [r.getMessage() for r in caplog.records if "not sent yet" in r.getMessage()]
    assert said.startswith("Flaky: 2 call(s) not sent yet (it is unreachable); trying for up to "), said


def test_a_second_ctrl_c_stops_waiting_for_a_tracker_that_is_down(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port nobody listens on once closed
        port = taken.getsockname()[1]
    program = tmp_path / "sleeps.py"
    program.write_text("import time\nopen('started', 'w').close()\ntime.sleep(120)\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"method: grid\nprogram: {program}\nparameters: {{x: {{values: [1]}}}}\n"
        f"integrations: {{mlflow: {{tracking_uri: 'http://127.0.0.1:{port}'}}}}\n"
    )
    stdout = tmp_path / "stdout.txt"
    with stdout.open("w") as out_file:  # stderr is read line by line below, by one reader only
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("sweeper")), "run", str(sweep), "--grace", "3"],
            cwd=tmp_path,
            stdout=out_file,
            stderr=subprocess.PIPE,
            text=True,
        )
    lines: list[str] = []
    waiting = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "not sent yet" in line:
                waiting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        # The trial is ended; the trackers get their time to take what waits, and it is said.
        assert waiting.wait(60), "".join(lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    reader.join(10)
    err, out = "".join(lines), stdout.read_text()
    assert proc.returncode == 130, out + err
    assert "MLflow: " in err and "(it is unreachable); trying for up to" in err, err
    assert "stopped waiting for the trackers; what they had not received yet is not sent" in err, err
    assert "is stopped: 1 lost" in out, out
