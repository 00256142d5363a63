"""``sweeper agent``: in-process with click's runner on an embedded store; signals with a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from process_support import alive, wait_until
from server_helpers import serving

import sweeper.cli.agent as agent_cli
from sweeper.cli import main
from sweeper.coordinator import Coordinator
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import SweepState, TrialState

SCRIPTS = Path(__file__).parent / "scripts"
SWEEPER = str(Path(sys.executable).parent / "sweeper")


def make_sweep(db: str, parameters: dict, program: str = "e2e_trial.py", **extra: object) -> str:
    raw = {"method": "grid", "program": str(SCRIPTS / program), "parameters": parameters, **extra}
    with open_store(db) as store:
        return Coordinator(store).create_sweep(parse_sweep(raw)).id


def last_line(result: Any) -> str:
    """The line an agent exits with."""
    return result.output.strip().splitlines()[-1]


def start_agent(here: Path, sweep_id: str, db: str, *args: str) -> subprocess.Popen[str]:
    """``sweeper agent`` on ``db`` in ``here``, its output kept."""
    return subprocess.Popen(
        [SWEEPER, "agent", sweep_id, "--db", db, *args],
        cwd=here,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("SWEEPER_COORDINATOR", "SWEEPER_TOKEN", "SWEEPER_DB"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_runs_the_sweep_to_the_end_and_says_why_it_exits(here: Path, sqlite_store_url: str) -> None:
    sweep_id = make_sweep(sqlite_store_url, {"x": {"values": [1, 2, 3, 4]}})
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url, "--slots", "2"])
    assert result.exit_code == 0, result.output
    assert last_line(result) == f"sweep {sweep_id} is complete: all 4 grid combinations have run"
    with open_store(sqlite_store_url) as store:
        trials = store.list_trials(sweep_id)
        assert sorted(t.config["x"] for t in trials) == [1, 2, 3, 4]
        assert {t.state for t in trials} == {TrialState.FINISHED}
        assert store.get_sweep(sweep_id).state is SweepState.FINISHED
    # Delivered reports leave nothing behind to resend.
    assert not list(here.glob(".sweeper/trials/*/*/spool.jsonl"))


def test_a_trial_whose_folder_was_removed_as_it_ran_runs_again_without_an_attempt(
    here: Path, sqlite_store_url: str
) -> None:
    """Its logs and metrics file gone, the script failed, and its end read "failed (no error
    message on stderr)", an attempt of the configuration. It is lost, cut short, and runs again."""
    program = here / "cleans_up.py"
    program.write_text(
        "import os, pathlib, shutil, sys\n"
        "once = pathlib.Path('removed-once')\n"
        "if not once.exists():\n"
        "    once.write_text('')\n"
        "    shutil.rmtree(os.environ['SWEEPER_TRIAL_DIR'])\n"
        "    sys.exit(1)\n"
    )
    sweep_id = make_sweep(
        sqlite_store_url, {"x": {"values": [1]}}, program=str(program), sweeper={"max_retries": 0}
    )
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url])
    assert result.exit_code == 0, result.output
    with open_store(sqlite_store_url) as store:
        first, again = store.list_trials(sweep_id)
    assert (first.state, again.state, again.retry_of) == (TrialState.LOST, TrialState.FINISHED, 1)
    folder = here / ".sweeper" / "trials" / sweep_id / "1"
    assert first.stop_reason == f"interrupted (its folder {folder} was removed while it ran)"


@pytest.mark.parametrize(("free", "lost"), [(0, True), (10**9, False)])
def test_a_failed_trial_on_a_full_disk_is_not_the_scripts_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, lost: bool
) -> None:
    from sweeper.agents import command_trial

    class Disk:
        f_bavail, f_frsize = free, 1

    monkeypatch.setattr(command_trial.os, "statvfs", lambda path: Disk())
    said = command_trial._folder_lost(tmp_path)
    assert said == (f"the disk holding {tmp_path} is full" if lost else None)


def test_count_caps_the_trials_of_this_process(here: Path, sqlite_store_url: str) -> None:
    sweep_id = make_sweep(sqlite_store_url, {"x": {"values": [1, 2, 3, 4, 5]}})
    result = CliRunner().invoke(
        main, ["agent", sweep_id, "--db", sqlite_store_url, "--count", "2", "--slots", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "count of 2" in last_line(result)
    with open_store(sqlite_store_url) as store:
        assert len(store.list_trials(sweep_id)) == 2


@pytest.mark.parametrize("state", [SweepState.CANCELLED, SweepState.STOPPED])
def test_a_stopped_sweep_sends_the_agent_home(here: Path, sqlite_store_url: str, state: SweepState) -> None:
    sweep_id = make_sweep(sqlite_store_url, {"x": {"values": [1, 2]}})
    with open_store(sqlite_store_url) as store:
        Coordinator(store).set_sweep_state(sweep_id, state)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url])
    assert result.exit_code == 0, result.output
    if state is SweepState.STOPPED:  # which can be taken up again: how is said
        assert (
            last_line(result)
            == f"sweep {sweep_id} was stopped ('sweeper resume {sweep_id}' takes it up again)"
        )
    else:
        assert last_line(result) == f"sweep {sweep_id} was cancelled"


def test_unknown_sweep_is_a_clear_error(here: Path, sqlite_store_url: str) -> None:
    make_sweep(sqlite_store_url, {"x": {"values": [1]}})
    result = CliRunner().invoke(main, ["agent", "nosuch", "--db", sqlite_store_url])
    assert result.exit_code == 1
    assert f"no sweep 'nosuch' at store {sqlite_store_url}" in result.output  # which store it looked in


def create_sweep(db: str, **raw: object) -> str:
    with open_store(db) as store:
        return Coordinator(store).create_sweep(parse_sweep({"method": "grid", **raw})).id


def test_an_agent_away_from_the_program_stops_before_it_takes_a_trial(
    here: Path, sqlite_store_url: str
) -> None:
    # Written for a folder that holds train.py; this agent runs elsewhere.
    sweep_id = create_sweep(sqlite_store_url, program="train.py", parameters={"x": {"values": [1, 2]}})
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url])
    assert result.exit_code == 1
    assert f"program: 'train.py' not found (looked for {here / 'train.py'})" in result.output
    assert "start the agent in the folder the sweep's program is in" in result.output
    with open_store(sqlite_store_url) as store:
        assert store.list_trials(sweep_id) == []  # no trial taken, none spent
        Coordinator(store).set_sweep_state(sweep_id, SweepState.CANCELLED)
    # A sweep that is over: the agent says so, wherever it runs.
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url])
    assert result.exit_code == 0, result.output
    assert last_line(result) == f"sweep {sweep_id} was cancelled"


def test_a_program_run_from_path_or_as_a_module_needs_no_file_here(here: Path, sqlite_store_url: str) -> None:
    x = {"x": {"values": [1]}}
    on_path = create_sweep(sqlite_store_url, program="true", command=["${program}", "${args}"], parameters=x)
    as_module = create_sweep(
        sqlite_store_url,
        program="json.tool",
        command=["${env}", "${interpreter}", "-m", "${program}", "-h"],
        parameters=x,
    )
    for sweep_id in (on_path, as_module):
        result = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url])
        assert result.exit_code == 0, result.output
        with open_store(sqlite_store_url) as store:
            assert [t.state for t in store.list_trials(sweep_id)] == [TrialState.FINISHED]


def test_gpus_and_slots_together_are_refused(here: Path, sqlite_store_url: str) -> None:
    result = CliRunner().invoke(main, ["agent", "x", "--db", sqlite_store_url, "--gpus", "0", "--slots", "2"])
    assert result.exit_code == 2 and "either --gpus or --slots" in result.output


def test_unreachable_coordinator_at_start_is_waited_for_then_fails(here: Path, monkeypatch) -> None:
    monkeypatch.setattr(agent_cli, "_START_BACKOFF", 0.01)
    monkeypatch.setattr(agent_cli, "START_WAIT", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["agent", "abc", "--coordinator", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    url = f"http://127.0.0.1:{port}"
    assert result.output.count(f"cannot reach the coordinator at {url} yet") == 1, result.output  # said once
    assert f"cannot reach the coordinator at {url} (tried for 1s)" in result.output


def test_an_agent_started_before_its_server_waits_for_it(here: Path, sqlite_store_url: str) -> None:
    # A job script that starts the server and its agents together: the agents may ask first.
    sweep_id = make_sweep(sqlite_store_url, {"n": {"values": [1]}}, "trial.py")
    with socket.socket() as s:  # a port nobody listens on yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = subprocess.Popen(
        [SWEEPER, "agent", sweep_id, "--coordinator", f"http://127.0.0.1:{port}"],
        cwd=here,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")},
    )
    try:
        time.sleep(2)  # the agent has been refused meanwhile
        assert agent.poll() is None
        with serving(sqlite_store_url, here / "server", token=None, port=port):
            out, err = agent.communicate(timeout=120)
    finally:
        agent.kill()
    assert agent.returncode == 0, out + err
    assert "yet" in err and "trying for 60s" in err
    with open_store(sqlite_store_url) as store:
        assert [t.state for t in store.list_trials(sweep_id)] == [TrialState.FINISHED]


def test_malformed_coordinator_url_is_refused(here: Path) -> None:
    result = CliRunner().invoke(main, ["agent", "abc", "--coordinator", "localhost:8765"])
    assert result.exit_code != 0 and "http://host:port" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_the_trials_and_exits_130(
    here: Path, sqlite_store_url: str, sig: signal.Signals
) -> None:
    sweep_id = make_sweep(
        sqlite_store_url,
        {"n": {"values": [1, 2]}, "hang": {"value": True}, "child": {"value": True}},
        "trial.py",
    )
    agent = start_agent(here, sweep_id, sqlite_store_url, "--slots", "2", "--grace", "2")
    pid_files = [here / ".sweeper" / "trials" / sweep_id / str(n) / "child.pid" for n in (1, 2)]
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in pid_files):
        assert agent.poll() is None and time.monotonic() < deadline, agent.communicate()
        time.sleep(0.05)
    grandchildren = [int(p.read_text()) for p in pid_files]
    agent.send_signal(sig)
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 130, out + err
    assert "interrupted: stopping running trials" in err
    with open_store(sqlite_store_url) as store:
        trials = store.list_trials(sweep_id)
    assert [t.state for t in trials] == [TrialState.LOST, TrialState.LOST], out + err
    assert all("interrupted" in (t.stop_reason or "") for t in trials)
    for pid in grandchildren:  # they ignore SIGTERM: only the SIGKILL after --grace ends them
        assert wait_until(lambda pid=pid: not alive(pid), 10), f"trial grandchild {pid} outlived the agent"


def test_an_agent_whose_standard_output_went_away_goes_on_and_exits_0(
    here: Path, sqlite_store_url: str
) -> None:
    """``sweeper agent ... | head -1``, or a ``tee`` that died: the trials still run."""
    sweep_id = make_sweep(sqlite_store_url, {"n": {"values": [1, 2, 3]}}, "trial.py")
    agent = start_agent(here, sweep_id, sqlite_store_url)
    assert agent.stdout is not None
    assert agent.stdout.readline().startswith(f"agent on sweep {sweep_id}")
    agent.stdout.close()  # as head does after its line
    agent.wait(120)
    err = agent.stderr.read() if agent.stderr is not None else ""
    assert agent.returncode == 0, err
    assert err.splitlines() == [
        "progress lines cannot be written to standard output (BrokenPipeError); the trials go on "
        "('sweeper status' follows them)"
    ], err
    with open_store(sqlite_store_url) as store:
        assert [t.state for t in store.list_trials(sweep_id)] == [TrialState.FINISHED] * 3


def test_an_agent_whose_standard_output_is_closed_from_the_start_runs_its_trials(
    here: Path, sqlite_store_url: str
) -> None:
    sweep_id = make_sweep(sqlite_store_url, {"n": {"values": [1, 2]}}, "trial.py")
    agent = start_agent(here, sweep_id, sqlite_store_url)
    assert agent.stdout is not None
    agent.stdout.close()  # before its first line
    agent.wait(120)
    err = agent.stderr.read() if agent.stderr is not None else ""
    assert agent.returncode == 0, err
    assert "Traceback" not in err, err
    with open_store(sqlite_store_url) as store:
        assert [t.state for t in store.list_trials(sweep_id)] == [TrialState.FINISHED] * 2


@pytest.mark.slow
def test_a_second_ctrl_c_kills_the_trials_without_waiting_out_the_grace_period(
    here: Path, sqlite_store_url: str
) -> None:
    stubborn = {"n": {"values": [1]}, "hang": {"value": True}, "child": {"value": True}}
    sweep_id = make_sweep(sqlite_store_url, stubborn, "trial.py")
    agent = start_agent(here, sweep_id, sqlite_store_url, "--grace", "600")
    pid_file = here / ".sweeper" / "trials" / sweep_id / "1" / "child.pid"
    assert wait_until(pid_file.exists, 60), agent.communicate(timeout=30)
    grandchild = int(pid_file.read_text())  # it ignores SIGTERM: only SIGKILL ends it
    agent.send_signal(signal.SIGINT)
    assert not wait_until(lambda: not alive(grandchild), 1.0), "SIGTERM alone ended it"
    agent.send_signal(signal.SIGINT)
    out, err = agent.communicate(timeout=60)  # not the 600 s of the grace period
    assert agent.returncode == 130, out + err
    assert "Ctrl-C again kills them now" in err and "killing the trials' processes now (SIGKILL)" in err
    assert wait_until(lambda: not alive(grandchild), 10)
    with open_store(sqlite_store_url) as store:
        (trial,) = store.list_trials(sweep_id)
    assert (trial.state, trial.stop_reason) == (TrialState.LOST, "interrupted (Ctrl-C)")


@pytest.mark.slow
def test_trials_the_job_s_signal_reached_before_their_agent_are_lost_not_failed(
    here: Path, sqlite_store_url: str
) -> None:
    """Slurm signals a job's processes one by one: a trial may die of the SIGTERM a moment before
    its agent hears it. It did not fail: it is lost, and runs again without using an attempt."""
    sweep_id = make_sweep(
        sqlite_store_url,
        {"n": {"values": [1, 2]}, "hang": {"value": True}, "write_pid": {"value": True}},
        "trial.py",
    )
    agent = start_agent(here, sweep_id, sqlite_store_url, "--slots", "2")
    pid_files = [here / ".sweeper" / "trials" / sweep_id / str(n) / "pid" for n in (1, 2)]
    assert wait_until(lambda: all(p.exists() for p in pid_files), 60), agent.communicate(timeout=30)
    time.sleep(0.5)  # the trials are past their start
    for pid_file in pid_files:
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
    time.sleep(0.3)  # the agent's turn comes a moment later
    agent.send_signal(signal.SIGTERM)
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 130, out + err
    with open_store(sqlite_store_url) as store:
        trials = store.list_trials(sweep_id)
    assert [(t.state, t.stop_reason) for t in trials] == [
        (TrialState.LOST, "interrupted (SIGTERM)"),
        (TrialState.LOST, "interrupted (SIGTERM)"),
    ], out + err


@pytest.mark.slow
def test_configurations_an_interrupted_agent_was_running_run_again(here: Path, sqlite_store_url: str) -> None:
    """Preemption, `docker stop`, Slurm's SIGTERM: the trials it cut short are no result, and the
    next agent runs their configurations again, so a grid does not end with them half-trained."""
    sweep_id = make_sweep(
        sqlite_store_url,
        {"n": {"values": [1, 2]}, "steps": {"value": 8}, "pause": {"value": 0.25}},
        "trial.py",
        metric={"name": "loss", "goal": "minimize"},
    )
    first = start_agent(here, sweep_id, sqlite_store_url, "--slots", "2")
    metrics = [here / ".sweeper" / "trials" / sweep_id / str(n) / "metrics.jsonl" for n in (1, 2)]
    assert wait_until(lambda: all(m.exists() and m.stat().st_size for m in metrics), 60), first.communicate()
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, out + err
    assert "lost" in out  # the progress line says so
    second = CliRunner().invoke(main, ["agent", sweep_id, "--db", sqlite_store_url])
    assert second.exit_code == 0, second.output
    assert last_line(second) == f"sweep {sweep_id} is complete: all 2 grid combinations have run"
    with open_store(sqlite_store_url) as store:
        trials = store.list_trials(sweep_id)
        best = Coordinator(store).best_trial(sweep_id)
    ran = sorted((t.config["n"], t.state.value, t.retry_of is not None) for t in trials)
    assert ran == [(1, "finished", True), (1, "lost", False), (2, "finished", True), (2, "lost", False)]
    assert best is not None and best.state is TrialState.FINISHED  # a cut-short value is never the best


@pytest.mark.slow
def test_an_agent_started_after_one_was_killed_ends_the_trial_it_left_running(
    here: Path, sqlite_store_url: str
) -> None:
    # Grid order: hang=True first (the trial the killed agent leaves behind), then hang=False. Its
    # child runs in a session of its own, as torchrun's workers do: outside the trial's group.
    sweep_id = make_sweep(
        sqlite_store_url, {"hang": {"values": [True, False]}, "session_child": {"value": True}}, "trial.py"
    )
    first = subprocess.Popen(
        [SWEEPER, "agent", sweep_id, "--db", sqlite_store_url, "--count", "1"],
        cwd=here,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trial_dir = here / ".sweeper" / "trials" / sweep_id / "1"
    deadline = time.monotonic() + 60
    while not (trial_dir / "child.pid").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()  # SIGKILL: no chance to stop its trial
    first.wait()
    grandchild = int((trial_dir / "child.pid").read_text())
    time.sleep(0.5)
    assert alive(grandchild), "the trial was expected to outlive its agent"

    second = subprocess.run(
        [SWEEPER, "agent", sweep_id, "--db", sqlite_store_url, "--count", "1", "--grace", "1"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"ended trial {sweep_id}/1's processes" in second.stderr
    assert wait_until(lambda: not alive(grandchild), 10), "the orphaned trial's processes are still running"
    assert not (trial_dir / "process.json").exists()


def _start_hanging_agent(here: Path, db: str, argv_prefix: tuple[str, ...] = (), **popen: object) -> tuple:
    sweep_id = make_sweep(
        db, {"n": {"values": [1]}, "hang": {"value": True}, "child": {"value": True}}, "trial.py"
    )
    agent = subprocess.Popen(
        [*argv_prefix, SWEEPER, "agent", sweep_id, "--db", db, "--grace", "2"], cwd=here, **popen
    )
    pid_file = here / ".sweeper" / "trials" / sweep_id / "1" / "child.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert agent.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return agent, sweep_id


@pytest.mark.slow
def test_a_hangup_that_took_the_terminal_away_still_stops_the_trials(
    here: Path, sqlite_store_url: str
) -> None:
    # The agent's output goes to a terminal that is gone by the time SIGHUP arrives: writing to it
    # fails, and the trials must be stopped all the same.
    terminal, agent_side = os.openpty()
    agent, sweep_id = _start_hanging_agent(
        here, sqlite_store_url, stdin=subprocess.DEVNULL, stdout=agent_side, stderr=agent_side
    )
    os.close(agent_side)
    os.close(terminal)
    agent.send_signal(signal.SIGHUP)
    assert agent.wait(60) == 130
    with open_store(sqlite_store_url) as store:
        (trial,) = store.list_trials(sweep_id)
    assert trial.state is TrialState.LOST and trial.stop_reason == "interrupted (SIGHUP)"


@pytest.mark.slow
def test_an_agent_started_under_nohup_ignores_hangups(here: Path, sqlite_store_url: str) -> None:
    ignore_hup = (
        sys.executable,
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN);"
        "os.execv(sys.argv[1], sys.argv[1:])",
    )
    agent, sweep_id = _start_hanging_agent(
        here, sqlite_store_url, ignore_hup, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    agent.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert agent.poll() is None, "the agent stopped on a hangup it was started to ignore"
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(60) == 130
    with open_store(sqlite_store_url) as store:
        (trial,) = store.list_trials(sweep_id)
    assert trial.stop_reason == "interrupted (SIGTERM)"
