"""The agent loop against a small in-memory coordinator, running real trial processes."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from process_support import alive, wait_until
from sweeper.agents import Agent, TrialAbandoned, TrialEnded, TrialStarted

import sweeper
from sweeper.protocol import (
    CONTINUE,
    AgentInfo,
    Assignment,
    Directive,
    LeaseLostError,
    NoTrial,
    NoTrialReason,
    TrialOutcome,
)
from sweeper.run import TrialStopped
from sweeper.trials import MetricPoint, TrialState

SCRIPTS = Path(__file__).parent / "scripts"
TRIAL = str(SCRIPTS / "trial.py")
INFO = AgentInfo(name="test-agent", host="localhost")


def assignment(
    number: int,
    config: dict[str, Any],
    *,
    command: Sequence[str] | None = None,
    program: str | None = TRIAL,
    sweep_id: str = "sw1",
    **extra: Any,
) -> Assignment:
    return Assignment(
        sweep_id=sweep_id,
        trial_id=100 + number,
        trial_number=number,
        lease_id=f"lease-{number}",
        lease_seconds=60.0,
        config=config,
        command=command if command is not None else ["${interpreter}", "${program}", "${args}"],
        program=program,
        metric_name="loss",
        **extra,
    )


class MemoryCoordinator:
    """Hands out a fixed list of replies and records every call. Implements CoordinatorClient."""

    def __init__(self, replies: Sequence[Assignment | NoTrial]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, int | None]] = []
        self.batches: list[list[MetricPoint]] = []
        self.finished: dict[int, TrialOutcome] = {}
        self.lock = threading.Lock()
        # Knobs a test turns:
        self.stop_when: Callable[[int, list[MetricPoint]], str | None] = lambda trial_id, points: None
        self.lost: set[int] = set()
        self.lose_when: Callable[[int], bool] = lambda trial_id: False  # lose a lease once this holds
        self.failures_left = 0  # trial calls that raise ConnectionError before doing anything
        self.fail_only: set[str] | None = None  # limit those failures to these calls
        self.failed: list[str] = []

    def next_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | NoTrial:
        self.calls.append(("next_trial", None))
        if self.replies:
            return self.replies.pop(0)
        return NoTrial(NoTrialReason.DONE, "sweep sw1 is finished")

    def unanswered_trial(self, sweep_id: str, agent: AgentInfo) -> None:
        self.calls.append(("unanswered_trial", None))

    def _trial_call(self, name: str, trial_id: int) -> None:
        with self.lock:
            self.calls.append((name, trial_id))
            if self.failures_left > 0 and (self.fail_only is None or name in self.fail_only):
                self.failures_left -= 1
                self.failed.append(name)
                raise ConnectionError("coordinator unreachable")
            if trial_id in self.lost or self.lose_when(trial_id):
                raise LeaseLostError(f"trial {trial_id}: lease expired")

    def _directive(self, trial_id: int) -> Directive:
        reason = self.stop_when(trial_id, self.points(trial_id))
        return Directive(stop=True, reason=reason) if reason else CONTINUE

    def heartbeat(self, trial_id: int, lease_id: str, *, interrupted: str | None = None) -> Directive:
        self._trial_call("heartbeat", trial_id)
        return self._directive(trial_id)

    def report_metrics(self, trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive:
        self._trial_call("report_metrics", trial_id)
        self.batches.append([p for p in points])
        assert all(isinstance(p, MetricPoint) for p in points)
        return self._directive(trial_id)

    def finish_trial(self, trial_id: int, lease_id: str, outcome: TrialOutcome) -> None:
        if outcome.interrupted and (
            trial_id in self.lost or self.lose_when(trial_id)
        ):  # taken late, as the store takes it
            self.calls.append(("finish_trial", trial_id))
        else:
            self._trial_call("finish_trial", trial_id)
        assert trial_id not in self.finished, "finished twice"
        self.finished[trial_id] = outcome

    def points(self, trial_id: int | None = None) -> list[MetricPoint]:
        # The agent's batches carry no trial id; the tests here run one trial at a time.
        return [p for batch in self.batches for p in batch]


def make_agent(client: MemoryCoordinator, tmp_path: Path, events: list | None = None, **kwargs: Any) -> Agent:
    kwargs.setdefault("heartbeat_interval", 0.1)
    kwargs.setdefault("report_interval", 0.05)
    kwargs.setdefault("grace_period", 2.0)
    kwargs.setdefault("poll_interval", 0.02)
    kwargs.setdefault("max_backoff", 0.2)
    return Agent(
        client,
        "sw1",
        info=INFO,
        workdir=tmp_path,
        on_event=(events.append if events is not None else None),
        **kwargs,
    )


def trial_dir(tmp_path: Path, number: int) -> Path:
    return tmp_path / ".sweeper" / "trials" / "sw1" / str(number)


# -- subprocess trials ---------------------------------------------------------------------------


def test_script_logs_metrics_and_finishes(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 4, "pause": 0.01})])
    events: list = []
    reason = make_agent(client, tmp_path, events).run()

    assert reason == "sweep sw1 is finished"
    outcome = client.finished[101]
    assert outcome.state is TrialState.FINISHED and outcome.exit_code == 0
    points = client.points()
    assert sorted((p.seq, p.name) for p in points) == [(s, n) for s in range(4) for n in ("acc", "loss")]
    losses = [p.value for p in sorted(points, key=lambda p: p.seq) if p.name == "loss"]
    assert losses == [1.0, 0.5, 1 / 3, 0.25]
    assert {p.step for p in points if p.seq == 2} == {2}

    started, ended = events
    assert isinstance(started, TrialStarted) and started.trial_dir == trial_dir(tmp_path, 1)
    assert started.argv[1:] == (TRIAL, "--steps=4", "--pause=0.01")
    assert isinstance(ended, TrialEnded) and ended.outcome == outcome
    assert ended.summary == {"loss": 0.25, "acc": 0.3} and ended.seconds >= 0

    folder = trial_dir(tmp_path, 1)
    assert json.loads((folder / "config.json").read_text()) == {"steps": 4, "pause": 0.01}
    assert (folder / "wandb-config.yaml").read_text() == (
        "wandb_version: 1\n\nsteps:\n  value: 4\npause:\n  value: 0.01\n"
    )
    assert "config: {'steps': 4, 'pause': 0.01" in (folder / "stdout.log").read_text()


def test_crashing_script_is_failed_with_exit_code_and_stderr_tail(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 1, "exit_code": 3})])
    make_agent(client, tmp_path).run()
    outcome = client.finished[101]
    assert outcome.state is TrialState.FAILED and outcome.exit_code == 3
    assert "something went wrong in the trial" in (outcome.stderr_tail or "")
    assert len(client.points()) == 2  # what it logged before failing still arrives


def test_python_traceback_reaches_the_tail(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("raise ValueError('bad learning rate')\n")
    client = MemoryCoordinator([assignment(1, {}, program=str(script))])
    make_agent(client, tmp_path).run()
    outcome = client.finished[101]
    assert outcome.state is TrialState.FAILED and outcome.exit_code == 1
    assert (outcome.stderr_tail or "").splitlines()[-1] == "ValueError: bad learning rate"


def test_a_traceback_line_longer_than_the_tail_keeps_its_start_and_end(tmp_path: Path) -> None:
    # An exception whose message holds a whole tensor: before, the tail dropped its only line and
    # the trial read as failing with nothing on stderr.
    script = tmp_path / "boom.py"
    script.write_text("raise ValueError('shape mismatch: ' + 'z' * 20000 + ' (end)')\n")
    client = MemoryCoordinator([assignment(1, {}, program=str(script))])
    make_agent(client, tmp_path).run()
    tail = client.finished[101].stderr_tail or ""
    assert tail.startswith("ValueError: shape mismatch: zzz") and tail.endswith("zzz (end)"), tail[:100]
    assert re.search(r"zzz \[\.\.\. \d+ bytes cut \.\.\.\] zzz", tail)
    assert 8000 < len(tail) < 9000


def test_a_long_error_line_followed_by_a_trackers_own_lines_is_still_the_reason(tmp_path: Path) -> None:
    # W&B prints its footer (the run's link, its log folder) on stderr after the script's error.
    from sweeper.agents.stderr import telling_line

    script = tmp_path / "boom.py"
    script.write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: print('wandb: Find logs at: wandb/run/logs', file=sys.stderr))\n"
        "raise RuntimeError('shape mismatch: ' + 'z' * 20000)\n"
    )
    client = MemoryCoordinator([assignment(1, {}, program=str(script))])
    make_agent(client, tmp_path).run()
    said = telling_line(client.finished[101].stderr_tail) or ""
    assert said.startswith("RuntimeError: shape mismatch: zzz") and "bytes cut" in said, said[:100]


def test_missing_program_fails_with_127(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {}, command=["./no-such-train", "${args}"])])
    make_agent(client, tmp_path).run()
    outcome = client.finished[101]
    assert outcome.state is TrialState.FAILED and outcome.exit_code == 127
    assert "no-such-train" in (outcome.stderr_tail or "")


def test_killed_by_a_signal_we_did_not_send_is_failed(tmp_path: Path) -> None:
    script = tmp_path / "selfkill.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    client = MemoryCoordinator([assignment(1, {}, program=str(script))])
    make_agent(client, tmp_path).run()
    outcome = client.finished[101]
    assert outcome.state is TrialState.FAILED and outcome.exit_code == -9
    assert "SIGKILL" in (outcome.stderr_tail or "")


def test_stop_directive_stops_the_whole_process_group(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 2, "hang": True, "child": True})])
    client.stop_when = lambda trial_id, points: "asha: below rung 1" if len(points) >= 4 else None
    events: list = []
    make_agent(client, tmp_path, events, grace_period=0.5).run()

    outcome = client.finished[101]
    assert outcome.state is TrialState.STOPPED and outcome.stop_reason == "asha: below rung 1"
    assert outcome.exit_code == -15
    grandchild = int((trial_dir(tmp_path, 1) / "child.pid").read_text())
    assert wait_until(lambda: not alive(grandchild)), "a grandchild outlived the stopped trial"
    assert isinstance(events[-1], TrialEnded) and events[-1].outcome.state is TrialState.STOPPED


def test_lease_lost_kills_the_process_and_moves_on_without_finishing(tmp_path: Path) -> None:
    client = MemoryCoordinator(
        [assignment(1, {"steps": 1, "hang": True, "child": True}), assignment(2, {"steps": 1})]
    )
    # The lease goes once the trial has started its grandchild, so the test can look for it afterwards.
    client.lose_when = lambda trial_id: trial_id == 101 and (trial_dir(tmp_path, 1) / "child.pid").exists()
    events: list = []
    make_agent(client, tmp_path, events).run()

    assert 101 not in client.finished
    assert client.finished[102].state is TrialState.FINISHED
    abandoned = [e for e in events if isinstance(e, TrialAbandoned)]
    assert len(abandoned) == 1 and abandoned[0].assignment.trial_id == 101 and "lease" in abandoned[0].reason
    started = [e for e in events if isinstance(e, TrialStarted)]
    assert [e.assignment.trial_number for e in started] == [1, 2]
    grandchild = int((trial_dir(tmp_path, 1) / "child.pid").read_text())
    assert wait_until(lambda: not alive(grandchild)), "the abandoned trial's processes live on"


def test_an_error_inside_the_agent_while_a_trial_runs_ends_the_trial_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any failure of the agent's own (here: reading the metrics file) must not leave the trial
    # running unwatched, holding its GPU.
    from sweeper.agents.metrics import MetricTailer

    client = MemoryCoordinator([assignment(1, {"steps": 1, "hang": True, "child": True})])
    read = MetricTailer.read_records

    def fails_once_started(self: MetricTailer) -> list:
        if (trial_dir(tmp_path, 1) / "child.pid").exists():
            raise RuntimeError("an agent bug")
        return read(self)

    monkeypatch.setattr(MetricTailer, "read_records", fails_once_started)
    with pytest.raises(RuntimeError, match="an agent bug"):
        make_agent(client, tmp_path).run()
    grandchild = int((trial_dir(tmp_path, 1) / "child.pid").read_text())
    assert wait_until(lambda: not alive(grandchild)), "the trial's processes outlived the agent's error"
    # ... and the coordinator hears of it now, not when the lease runs out.
    outcome = client.finished[101]
    assert outcome.state is TrialState.FAILED and "an agent bug" in (outcome.stderr_tail or "")


def test_connection_errors_delay_metrics_but_each_arrives_exactly_once(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 6, "pause": 0.05})])
    client.failures_left = 4
    client.fail_only = {"report_metrics"}
    make_agent(client, tmp_path).run()

    assert client.finished[101].state is TrialState.FINISHED
    assert client.failed == ["report_metrics"] * 4
    keys = [(p.seq, p.name) for p in client.points()]
    assert len(keys) == len(set(keys)) == 12  # 6 log calls x 2 metrics, none lost, none sent twice
    assert sorted({seq for seq, _ in keys}) == list(range(6))


def test_connection_errors_at_the_end_are_retried(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 2})])
    events: list = []
    agent = make_agent(client, tmp_path, events, report_interval=60.0, heartbeat_interval=60.0)

    def fail_from_now_on(event: object) -> None:
        events.append(event)
        if isinstance(event, TrialStarted):
            client.failures_left = 3  # hits the final report and finish

    agent.on_event = fail_from_now_on
    agent.run()
    assert client.finished[101].state is TrialState.FINISHED
    assert len(client.points()) == 4
    assert client.failed == ["report_metrics"] * 3
    assert isinstance(events[-1], TrialEnded)


def test_agent_stop_ends_the_trial_and_run_returns(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 1, "hang": True}), assignment(2, {"steps": 1})])
    events: list = []
    agent = make_agent(client, tmp_path, events)

    def stop_when_started(event: object) -> None:
        events.append(event)
        if isinstance(event, TrialStarted):
            threading.Timer(0.3, agent.stop, args=("interrupted (Ctrl-C)",)).start()

    agent.on_event = stop_when_started
    assert agent.run() == "interrupted (Ctrl-C)"
    outcome = client.finished[101]
    # Interrupted, it did not end by itself: lost, so its configuration runs again later.
    assert outcome.state is TrialState.LOST and outcome.stop_reason == "interrupted (Ctrl-C)"
    assert 102 not in client.finished and agent.trials_run == 1


@pytest.mark.parametrize("state", [TrialState.LOST, TrialState.FINISHED])
def test_an_interrupted_end_is_reported_though_the_lease_ran_out_before_its_points_went(
    state: TrialState,
) -> None:
    """The agent was told to stop while the coordinator was away, which counted the trial lost
    meanwhile: the points it had left count no more, but the interruption reaches it, so the
    trial uses no attempt. A result does not."""
    from sweeper.agents.ending import report_end
    from sweeper.agents.reporting import TrialReporter
    from sweeper.agents.trialrun import StopSignal

    client = MemoryCoordinator([])
    client.lost.add(101)  # it is back, and the lease ran out meanwhile
    a = assignment(1, {})
    reporter = TrialReporter(client, a, clock=time.time, report_interval=0.0, heartbeat_interval=1.0)
    reporter.add([MetricPoint("loss", 0.5, 3, 3, 0.0)])
    events: list = []
    outcome = TrialOutcome(state, stop_reason="interrupted (SIGTERM)" if state is TrialState.LOST else None)
    stop = StopSignal()
    stop.request("interrupted (SIGTERM)")
    report_end(
        client, a, reporter, outcome, started=0.0, clock=time.time, timeout=5.0, stop=stop, emit=events.append
    )
    if state is TrialState.LOST:
        assert client.finished == {101: outcome} and isinstance(events[-1], TrialEnded)
    else:
        assert client.finished == {} and isinstance(events[-1], TrialAbandoned)


def test_a_folder_that_breaks_after_the_agent_started_gives_its_trial_back_and_stops_it(
    tmp_path: Path,
) -> None:
    """A disk that fills up, a folder removed: the trial is not the script's failure (lost,
    interrupted, no attempt used), and every trial after it would fail alike."""

    class BreaksTheFolder(MemoryCoordinator):
        def next_trial(self, sweep_id: str, agent: AgentInfo) -> Assignment | NoTrial:
            (tmp_path / ".sweeper" / "trials" / "sw1").write_text("not a folder")
            return super().next_trial(sweep_id, agent)

    client = BreaksTheFolder([assignment(1, {"steps": 1}), assignment(2, {"steps": 1})])
    agent = make_agent(client, tmp_path)
    said = agent.run()
    assert said.startswith("cannot prepare the trial folder: [Errno 20] Not a directory")
    assert "this agent stops (trial 1 runs again)" in said and agent.gave_up
    outcome = client.finished[101]
    assert outcome.interrupted and "cannot prepare the trial folder" in outcome.stop_reason
    assert 102 not in client.finished


def test_a_trial_that_exits_as_its_agent_is_told_to_stop_is_lost_not_finished(tmp_path: Path) -> None:
    # Slurm signals every process of a job: a script that exits 0 on SIGTERM may end before its
    # agent stops it. Its values are cut short all the same: no result, and it runs again.
    client = MemoryCoordinator([assignment(1, {"steps": 1}), assignment(2, {"steps": 1})])
    agent = make_agent(client, tmp_path)

    def stop_once_it_has_exited(event: object) -> None:
        if isinstance(event, TrialStarted):
            done = tmp_path / ".sweeper" / "trials" / "sw1" / "1" / "stdout.log"
            deadline = time.monotonic() + 30
            while "config:" not in (done.read_text() if done.exists() else ""):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.3)  # the process has ended; the agent has not looked yet
            agent.stop("interrupted (SIGTERM)")

    agent.on_event = stop_once_it_has_exited
    assert agent.run() == "interrupted (SIGTERM)"
    outcome = client.finished[101]
    assert (outcome.state, outcome.exit_code, outcome.stop_reason) == (
        TrialState.LOST,
        0,
        "interrupted (SIGTERM)",
    )
    assert 102 not in client.finished  # nothing more was taken


def test_a_trial_killed_by_sigterm_while_its_agent_goes_on_has_failed(tmp_path: Path) -> None:
    # The agent waits a moment for a signal of its own (Slurm's, one process after the other);
    # none comes, so the trial's death is its own failure, as before.
    kill_itself = ["${interpreter}", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    client = MemoryCoordinator([assignment(1, {}, command=kill_itself, program=None)])
    make_agent(client, tmp_path).run()
    outcome = client.finished[101]
    assert (outcome.state, outcome.exit_code, outcome.stop_reason) == (TrialState.FAILED, -15, None)


def test_a_trial_that_exits_is_noticed_at_once_not_at_the_next_look(tmp_path: Path) -> None:
    # Between looks at its trial the agent sleeps a poll interval; the process's end wakes it, so
    # the GPU does not idle for the rest of the interval. With a 60 s interval, three short trials
    # took at least 60 s each before.
    client = MemoryCoordinator([assignment(n, {"steps": 1}) for n in (1, 2, 3)])
    started = time.monotonic()
    make_agent(client, tmp_path, poll_interval=60.0).run()
    assert time.monotonic() - started < 30
    assert [client.finished[100 + n].state for n in (1, 2, 3)] == [TrialState.FINISHED] * 3


def test_a_stop_still_wakes_an_agent_whose_trial_runs_on(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 1, "hang": True})])
    agent = make_agent(client, tmp_path, poll_interval=60.0)
    agent.on_event = lambda event: (
        threading.Timer(0.3, agent.stop, args=("interrupted (Ctrl-C)",)).start()
        if isinstance(event, TrialStarted)
        else None
    )
    started = time.monotonic()
    assert agent.run() == "interrupted (Ctrl-C)"
    assert time.monotonic() - started < 30
    assert client.finished[101].state is TrialState.LOST


def test_wait_then_count(tmp_path: Path) -> None:
    client = MemoryCoordinator(
        [
            NoTrial(NoTrialReason.WAIT, "trials still running", retry_after=0.01),
            assignment(1, {"steps": 1}),
            assignment(2, {"steps": 1}),
        ]
    )
    reason = make_agent(client, tmp_path, count=1).run()
    assert "1 trial" in reason
    assert list(client.finished) == [101]
    assert [c for c in client.calls if c[0] == "next_trial"] == [("next_trial", None)] * 2


def test_an_agent_waiting_long_for_one_reason_says_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A clock that moves 4 s per look: the third "paused" passes the 10 s notice.
    ticks = iter(range(0, 10_000, 4))
    paused = NoTrial(NoTrialReason.WAIT, "sweep sw1 is paused", retry_after=0.0)
    running = NoTrial(NoTrialReason.WAIT, "trials still running", retry_after=0.0)
    client = MemoryCoordinator([running, *[paused] * 6, assignment(1, {"steps": 1})])
    with caplog.at_level("WARNING", logger="sweeper.agents"):
        make_agent(client, tmp_path, monotonic=lambda: float(next(ticks))).run()
    said = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert said == [f"{INFO.name}: waiting: sweep sw1 is paused"]
    assert list(client.finished) == [101]


def test_a_wait_whose_numbers_change_is_one_reason_and_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The last trials of a sweep finishing one by one over 12 s (4 s per look).
    ticks = iter(range(0, 10_000, 4))
    tail = [
        NoTrial(
            NoTrialReason.WAIT,
            f"all 9 grid combinations have run or are running; waiting for {n} running trial(s)",
        )
        for n in (5, 4, 3, 2, 1)
    ]
    client = MemoryCoordinator([*tail, NoTrial(NoTrialReason.DONE, "sweep sw1 is complete")])
    with caplog.at_level("WARNING", logger="sweeper.agents"):
        make_agent(client, tmp_path, monotonic=lambda: float(next(ticks))).run()
    said = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert said == [f"{INFO.name}: waiting: {tail[3].message}"]


def test_sweep_stopped_ends_the_agent(tmp_path: Path) -> None:
    client = MemoryCoordinator([NoTrial(NoTrialReason.STOPPED, "sweep sw1 was cancelled")])
    assert make_agent(client, tmp_path).run() == "sweep sw1 was cancelled"


def test_trial_environment_and_program_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_TOKEN", "secret-token")
    monkeypatch.setenv("KEEP_ME", "yes")
    client = MemoryCoordinator([assignment(7, {"lr": 0.1}, program="elsewhere.py")])
    make_agent(client, tmp_path, program_override=str(SCRIPTS / "dump_env.py"), gpu="1").run()
    assert client.finished[107].state is TrialState.FINISHED
    folder = trial_dir(tmp_path, 7)
    seen = json.loads((folder / "seen.json").read_text())
    env = seen["env"]
    assert seen["argv"] == ["--lr=0.1"] and seen["cwd"] == str(tmp_path)
    assert env["SWEEPER_SWEEP_ID"] == "sw1" and env["WANDB_SWEEP_ID"] == "sw1"
    assert env["SWEEPER_TRIAL_ID"] == "107" and env["SWEEPER_TRIAL_NUMBER"] == "7"
    assert env["SWEEPER_TRIAL_DIR"] == str(folder)
    assert env["SWEEPER_CONFIG_PATH"] == str(folder / "config.json")
    assert env["SWEEPER_METRICS_PATH"] == str(folder / "metrics.jsonl")
    assert env["WANDB_SWEEP_PARAM_PATH"] == str(folder / "wandb-config.yaml")
    assert env["WANDB_RUN_ID"] == "sw1-7"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["KEEP_ME"] == "yes" and "SWEEPER_TOKEN" not in env


# -- function mode ---------------------------------------------------------------------------------


def test_function_mode_finishes_and_forwards_metrics(tmp_path: Path) -> None:
    seen: list[dict] = []

    def train() -> None:
        run = sweeper.init({"lr": 0.01, "epochs": 3})
        seen.append(run.config.as_dict())
        for epoch in range(run.config.epochs):
            sweeper.log({"loss": run.config.lr * (epoch + 1)})

    client = MemoryCoordinator([assignment(1, {"lr": 0.5}), assignment(2, {"lr": 0.25, "epochs": 1})])
    events: list = []
    make_agent(client, tmp_path, events, function=train).run()

    assert seen == [{"lr": 0.5, "epochs": 3}, {"lr": 0.25, "epochs": 1}]
    assert client.finished[101].state is TrialState.FINISHED
    assert client.finished[102].state is TrialState.FINISHED
    assert [(p.seq, p.value) for p in client.points()] == [(0, 0.5), (1, 1.0), (2, 1.5), (0, 0.25)]
    ended = [e for e in events if isinstance(e, TrialEnded)]
    assert [e.summary for e in ended] == [{"loss": 1.5}, {"loss": 0.25}]
    assert sweeper.run.current_run() is None  # the agent finished the function's run


def test_function_mode_exception_is_failed_with_traceback(tmp_path: Path) -> None:
    def train() -> None:
        sweeper.init()
        raise ValueError("diverged at step 3")

    client = MemoryCoordinator([assignment(1, {})])
    make_agent(client, tmp_path, function=train).run()
    outcome = client.finished[101]
    assert outcome.state is TrialState.FAILED
    tail = (outcome.stderr_tail or "").splitlines()
    assert tail[-1] == "ValueError: diverged at step 3" and tail[0].startswith("Traceback")


def test_function_mode_stop_directive_raises_trial_stopped(tmp_path: Path) -> None:
    logged: list[int] = []
    caught: list[BaseException] = []

    def train() -> None:
        run = sweeper.init()
        for step in range(10_000):
            try:
                run.log({"loss": 1.0})
            except TrialStopped as exc:
                caught.append(exc)
                raise
            logged.append(step)
            time.sleep(0.01)

    client = MemoryCoordinator([assignment(1, {})])
    client.stop_when = lambda trial_id, points: "hyperband: cut at rung 0" if points else None
    make_agent(client, tmp_path, function=train).run()

    outcome = client.finished[101]
    assert outcome.state is TrialState.STOPPED and outcome.stop_reason == "hyperband: cut at rung 0"
    assert len(caught) == 1 and len(logged) < 10_000


def test_function_mode_lease_lost_is_abandoned(tmp_path: Path) -> None:
    def train() -> None:
        run = sweeper.init()
        while True:
            run.log({"loss": 1.0})
            time.sleep(0.01)

    client = MemoryCoordinator([assignment(1, {})])
    client.lost.add(101)
    events: list = []
    make_agent(client, tmp_path, events, function=train).run()
    assert client.finished == {}
    assert isinstance(events[-1], TrialAbandoned)


def test_function_mode_agents_in_threads_keep_their_own_trials(tmp_path: Path) -> None:
    both_inited = threading.Barrier(2, timeout=30)
    both_logged = threading.Barrier(2, timeout=30)

    def train() -> None:
        run = sweeper.init({"x": 0})
        both_inited.wait()  # both trials are open at once from here on
        sweeper.log({"x": run.config.x})
        both_logged.wait()
        assert sweeper.run.current_run() is run

    clients = [MemoryCoordinator([assignment(1, {"x": 1})]), MemoryCoordinator([assignment(1, {"x": 2})])]
    agents = [make_agent(c, tmp_path / str(i), function=train) for i, c in enumerate(clients)]
    threads = [threading.Thread(target=a.run) for a in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [c.finished[101].state for c in clients] == [TrialState.FINISHED] * 2
    assert [[p.value for p in c.points()] for c in clients] == [[1.0], [2.0]]


# -- W&B compatibility -----------------------------------------------------------------------------


@pytest.mark.slow
def test_unchanged_wandb_script_sees_the_trial_values(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "set-in-the-agents-shell")  # the sweep file's wins, as in W&B
    config = {"lr": 0.003, "optimizer": "adam", "layers": 4, "model": {"dropout": 0.1}}
    script = str(SCRIPTS / "wandb_trial.py")
    client = MemoryCoordinator([assignment(1, config, program=script, project="from-the-sweep-file")])
    make_agent(client, tmp_path, heartbeat_interval=1.0).run()

    outcome = client.finished[101]
    stdout = (trial_dir(tmp_path, 1) / "stdout.log").read_text()
    assert outcome.state is TrialState.FINISHED, outcome.stderr_tail
    line = next(x for x in stdout.splitlines() if x.startswith("WANDB_CONFIG="))
    assert json.loads(line.removeprefix("WANDB_CONFIG=")) == config
    # The sweep file's project, as under W&B (which ignores wandb.init(project=...) in a sweep).
    assert "WANDB_PROJECT_OF_RUN=from-the-sweep-file" in stdout.splitlines()
    assert os.listdir(tmp_path / "wandb")  # it wrote its offline run where we asked


class RefusedBatch(Exception):
    """What the HTTP client raises for a 413: the coordinator takes smaller metric batches."""

    status = 413


def test_a_report_refused_as_too_large_is_resent_in_smaller_batches(tmp_path: Path) -> None:
    client = MemoryCoordinator([assignment(1, {"steps": 8, "pause": 0.05})])
    original = client.report_metrics

    def small_batches_only(trial_id: int, lease_id: str, points: Sequence[MetricPoint]) -> Directive:
        if len(points) > 1:
            client.calls.append(("refused", trial_id))
            raise RefusedBatch(f"a metric report holds at most 1 point, this one has {len(points)}")
        return original(trial_id, lease_id, points)

    client.report_metrics = small_batches_only  # type: ignore[method-assign]
    make_agent(client, tmp_path, max_backoff=0.05).run()

    assert client.finished[101].state is TrialState.FINISHED
    assert ("refused", 101) in client.calls  # every log call holds 2 points: the first report is refused
    assert all(len(batch) == 1 for batch in client.batches)
    keys = [(p.seq, p.name) for p in client.points()]
    assert len(keys) == len(set(keys)) == 16  # 8 log calls x 2 metrics, each once
