"""``sweeper sweep|stop|pause|resume|cancel`` on the embedded store, and against a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import SWEEPER
from click.testing import CliRunner
from server_helpers import TOKEN, serving, start_server
from sqlalchemy.engine import make_url

from sweeper.cli import inspect, main
from sweeper.cli.inspect import trial_to_json
from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import MetricPoint, SweepState, TrialState

SWEEP_FILE = """\
method: grid
name: cli
program: train.py
metric: {name: acc, goal: maximize}
parameters:
  lr: {values: [0.1, 0.01]}
"""


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP_FILE)
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(
        main, list(args), env={"SWEEPER_COORDINATOR": "", "SWEEPER_TOKEN": "", **(env or {})}
    )


def test_sweep_prints_the_id_and_a_hint(sweep_file: Path, sqlite_store_url: str) -> None:
    result = invoke("sweep", str(sweep_file), "--db", sqlite_store_url)
    assert result.exit_code == 0, result.output
    sweep_id = result.stdout.strip()
    assert f"sweeper agent {sweep_id} --db {sqlite_store_url}" in result.stderr  # the same store
    with open_store(sqlite_store_url) as store:
        sweep = store.get_sweep(sweep_id)
    assert (sweep.name, sweep.state, sweep.spec["parameters"]) == (
        "cli",
        SweepState.RUNNING,
        {"lr": {"values": [0.1, 0.01]}},
    )


def test_the_agent_hint_works_from_the_programs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sweep.yaml").write_text(SWEEP_FILE)  # program: train.py, beside it
    (tmp_path / "sub" / "train.py").write_text("")
    monkeypatch.chdir(tmp_path)
    for store, shown in [(["--db", "my.db"], tmp_path / "my.db"), ([], tmp_path / ".sweeper" / "sweeper.db")]:
        result = invoke("sweep", "sub/sweep.yaml", *store)
        assert result.exit_code == 0, result.output
        hint = f"start agents in {tmp_path / 'sub'} with: sweeper agent {result.stdout.strip()} --db sqlite:///{shown}"
        assert hint in result.stderr, result.stderr
    # The common layout: the program here, sweep files in a folder of their own. Agents start here.
    (tmp_path / "sub" / "train.py").rename(tmp_path / "train.py")
    result = invoke("sweep", "sub/sweep.yaml")
    assert f"start agents with: sweeper agent {result.stdout.strip()}\n" in result.stderr, result.stderr


def test_an_invalid_sweep_file_exits_2_and_stores_nothing(tmp_path: Path, sqlite_store_url: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: gird\nparameters: {lr: {min: 1, max: 0}}\n")
    result = invoke("sweep", str(bad), "--db", sqlite_store_url)
    assert result.exit_code == 2
    assert "method" in result.output and "parameters.lr" in result.output
    with open_store(sqlite_store_url) as store:
        assert store.list_sweeps() == []


def test_a_sweep_without_a_program_is_for_python_agents_and_refused_by_a_server(
    tmp_path: Path, sqlite_store_url: str
) -> None:
    path = tmp_path / "function.yaml"  # as for wandb.agent(sweep_id, function=train)
    path.write_text(SWEEP_FILE.replace("program: train.py\n", ""))
    result = invoke("sweep", str(path), "--db", sqlite_store_url)
    assert result.exit_code == 0, result.output
    sweep_id = result.stdout.strip()
    assert "program: not given, and the command runs ${program}: `sweeper agent` cannot run" in result.stderr
    assert f"from Python with: sweeper.agent('{sweep_id}', function=train, db='{sqlite_store_url}')" in (
        result.stderr
    )
    assert "sweeper agent " + sweep_id not in result.stderr
    # A server's agents run commands: refused before the server is even reached.
    result = invoke("sweep", str(path), "--coordinator", "http://127.0.0.1:9")
    assert result.exit_code == 2, result.output
    assert f"{path}: program: required: the command runs ${{program}}" in result.output, result.output
    with open_store(sqlite_store_url) as store:
        assert [s.id for s in store.list_sweeps()] == [sweep_id]


def test_the_wandb_sweep_command_line_works_as_written(sweep_file: Path, sqlite_store_url: str) -> None:
    """`wandb sweep --project P --entity E FILE` prints a path `E/P/ID`, which `wandb agent` takes:
    the same lines work here."""
    made = invoke(
        "sweep", "--project", "vision", "--entity", "lab", str(sweep_file), "--db", sqlite_store_url
    )
    assert made.exit_code == 0, made.output
    sweep_id = made.stdout.strip()
    with open_store(sqlite_store_url) as store:
        spec = store.get_sweep(sweep_id).spec
    assert (spec["project"], spec["entity"]) == ("vision", "lab"), "over the file's own, as in W&B"
    for path in (f"lab/vision/{sweep_id}", f"vision/{sweep_id}"):
        paused = invoke("pause", path, "--db", sqlite_store_url)
        assert (paused.exit_code, paused.output) == (0, f"sweep {sweep_id} is paused\n")
        status = invoke("status", path, "--db", sqlite_store_url)
        assert status.exit_code == 0 and f"sweep {sweep_id} (grid) is paused" in status.output
        assert invoke("trials", path, "--db", sqlite_store_url).exit_code == 0
        assert invoke("resume", path, "--db", sqlite_store_url).exit_code == 0
    wrong = invoke("status", "a/b/c/d", "--db", sqlite_store_url)
    assert wrong.exit_code == 1 and "no sweep with id 'a/b/c/d'" in wrong.output


def test_state_commands_follow_the_sweep_state_machine(sweep_file: Path, sqlite_store_url: str) -> None:
    sweep_id = invoke("sweep", str(sweep_file), "--db", sqlite_store_url).stdout.strip()
    for command, state in [
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
        ("resume", "running"),
    ]:
        result = invoke(command, sweep_id, "--db", sqlite_store_url)
        assert (result.exit_code, result.output) == (0, f"sweep {sweep_id} is {state}\n")
    result = invoke("cancel", sweep_id, "--db", sqlite_store_url)
    assert result.exit_code == 0
    result = invoke("resume", sweep_id, "--db", sqlite_store_url)
    assert result.exit_code == 1 and "cancelled: it cannot become running" in result.output
    result = invoke("pause", "nosuch", "--db", sqlite_store_url)
    assert result.exit_code == 1 and "no sweep with id 'nosuch'" in result.output


def test_a_grid_that_finished_with_a_broken_configuration_is_resumed_once_it_is_fixed(tmp_path: Path) -> None:
    """The script fails for x=2 until it is fixed: the grid finishes (each combination has run),
    says what has no result and how to run it again; `sweeper resume` on the finished sweep, then
    an agent, runs x=2 again (it was refused: a finished sweep cannot become running)."""
    (tmp_path / "train.py").write_text(
        "import pathlib, sys, sweeper\n"
        "run = sweeper.init()\n"
        "if run.config.x == 2 and not pathlib.Path('fixed').exists():\n"
        "    sys.exit('x=2 is broken')\n"
        "run.log({'acc': run.config.x / 10})\n"
    )
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("program: train.py\nmethod: grid\nparameters:\n  x: {values: [1, 2]}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    env["SWEEPER_DB"] = f"sqlite:///{tmp_path / 'sweeps.db'}"

    def sweeper_here(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SWEEPER, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    sweep_id = sweeper_here("sweep", str(sweep_file)).stdout.strip()
    first = sweeper_here("agent", sweep_id)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        f"1 configuration has no result: fix what failed, then 'sweeper resume {sweep_id}' and an agent"
        in first.stdout
    ), first.stdout
    status = sweeper_here("status", sweep_id).stdout
    assert f"note: 1 configuration has no result: fix what failed, then 'sweeper resume {sweep_id}'" in status
    (tmp_path / "fixed").write_text("")
    resumed = sweeper_here("resume", sweep_id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == f"sweep {sweep_id} is running\n"
    assert f"run again: sweeper agent {sweep_id}" in resumed.stderr
    second = sweeper_here("agent", sweep_id)
    assert second.returncode == 0 and "no result" not in second.stdout, second.stdout + second.stderr
    trials = json.loads(sweeper_here("trials", sweep_id, "--format", "json").stdout)
    assert [(t["config"]["x"], t["state"]) for t in trials] == [
        (1, "finished"),
        (2, "failed"),
        (2, "failed"),
        (2, "finished"),
    ]
    again = sweeper_here("resume", sweep_id)  # every configuration has a result now
    assert again.returncode == 1 and "nothing would run again" in again.stderr, again.stderr


def test_cancel_stops_running_trials_at_their_next_heartbeat(sweep_file: Path, sqlite_store_url: str) -> None:
    from sweeper.connect import connect

    sweep_id = invoke("sweep", str(sweep_file), "--db", sqlite_store_url).stdout.strip()
    coordinator = connect(db=sqlite_store_url)
    trial = coordinator.next_trial(sweep_id, AgentInfo("a", "h"))
    assert isinstance(trial, Assignment)
    assert coordinator.heartbeat(trial.trial_id, trial.lease_id).stop is False
    assert invoke("cancel", sweep_id, "--db", sqlite_store_url).exit_code == 0
    directive = coordinator.heartbeat(trial.trial_id, trial.lease_id)
    assert directive.stop and directive.reason == "sweep cancelled"


def test_status_and_cancel_mark_a_dead_agents_trial_lost_once_its_lease_ran_out(
    sweep_file: Path, sqlite_store_url: str
) -> None:
    from sweeper.coordinator import Coordinator

    sweep_id = invoke("sweep", str(sweep_file), "--db", sqlite_store_url).stdout.strip()
    with open_store(sqlite_store_url) as store:  # an agent leased a trial long ago, then died
        assert isinstance(
            Coordinator(store, clock=lambda: 1000.0).next_trial(sweep_id, AgentInfo("a", "h")), Assignment
        )
    result = invoke("status", sweep_id, "--db", sqlite_store_url)
    assert result.exit_code == 0 and "is running: 1 lost\n" in result.output, result.output
    assert invoke("cancel", sweep_id, "--db", sqlite_store_url).exit_code == 0
    with open_store(sqlite_store_url) as store:
        (trial,) = store.list_trials(sweep_id)
        assert trial.state.value == "lost" and "lease expired" in (trial.stop_reason or "")


def test_an_unreachable_coordinator_is_one_clear_line(sweep_file: Path) -> None:
    result = invoke("sweep", str(sweep_file), "--coordinator", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "coordinator http://127.0.0.1:9 unreachable" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", [["status"], ["trials", "abc"]])
def test_a_server_that_never_answers_is_given_up_on_with_a_message(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server stopped with Ctrl-Z takes connections and answers nothing: before, the listings
    # waited 10 minutes in silence.
    monkeypatch.setattr(inspect, "READ_TIMEOUT", 1.0)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = invoke(*command, "--coordinator", url)
        took = time.monotonic() - started
    assert result.exit_code == 1 and "no answer within 1s" in result.output, result.output
    assert took < 30, took  # a bound on the wait, not a timing of it


def test_a_sweep_made_on_a_server_that_does_not_answer_in_time_may_yet_exist(
    sweep_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that took the request and answered nothing in time (stopped, busy) may make the
    sweep once it goes on: said, so that it is looked for before it is made twice."""
    from sweeper.cli import common, service

    monkeypatch.setattr(
        service, "connect_or_fail", lambda *a, **k: common.connect_or_fail(*a, **{**k, "timeout": 1.0})
    )
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = invoke("sweep", str(sweep_file), "--coordinator", url)
    assert result.exit_code == 1 and "no answer within 1s" in result.output, result.output
    assert "the server may still make the sweep: look with 'sweeper status'" in result.output


@pytest.mark.parametrize("command", [["status"], ["agent", "abcd1234"]])
def test_client_settings_that_cannot_work_are_one_line_before_any_call(
    command: list[str], tmp_path: Path
) -> None:
    # Before, each of these was a traceback (FileNotFoundError, ssl.SSLError, ValueError,
    # UnicodeEncodeError); a URL's password was shown, and never sent.
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    url = "https://127.0.0.1:9"
    cases = [
        ({"SWEEPER_CA_FILE": str(tmp_path / "nope.pem")}, [], "nope.pem' (SWEEPER_CA_FILE): no such file"),
        (
            {"SWEEPER_CA_FILE": str(tmp_path / "junk.pem")},
            [],
            "junk.pem' (SWEEPER_CA_FILE) holds no certificate",
        ),
        (
            {"SWEEPER_TOKEN": "s3cret\r"},
            [],
            "an HTTP header cannot carry (spaces, control characters such as a",
        ),
        ({}, ["--token", "токен"], "an HTTP header cannot carry"),
    ]
    for env, args, said in cases:
        result = invoke(*command, "--coordinator", url, *args, env=env)
        assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output, (
            result.output
        )
    from_env = invoke(*command, "--coordinator", url, env={"SWEEPER_TOKEN": "s3cret\r"})
    assert from_env.output.rstrip().endswith("(from SWEEPER_TOKEN)"), from_env.output
    result = invoke(*command, "--coordinator", "http://user:hunter2@127.0.0.1:9")
    assert result.exit_code == 1 and "holds a user or password, which sweeper does not send" in result.output
    assert "hunter2" not in result.output


def test_what_is_typed_wins_over_the_environment(sweep_file: Path, sqlite_store_url: str) -> None:
    sweep_id = invoke("sweep", str(sweep_file), "--db", sqlite_store_url).stdout.strip()
    # Before, SWEEPER_COORDINATOR won over a typed --db, and the sweep was looked for on the server.
    nowhere = {"SWEEPER_COORDINATOR": "http://127.0.0.1:9"}
    result = invoke("status", sweep_id, "--db", sqlite_store_url, env=nowhere)
    assert result.exit_code == 0 and f"sweep {sweep_id}" in result.output, result.output
    typed = invoke(
        "status", sweep_id, "--coordinator", "http://127.0.0.1:9", env={"SWEEPER_DB": sqlite_store_url}
    )
    assert typed.exit_code == 1 and "127.0.0.1:9 unreachable" in typed.output, typed.output
    # ... everywhere the command uses it: where the sweep went, what the hint says, what is looked for.
    made = invoke("sweep", str(sweep_file), "--db", sqlite_store_url, env=nowhere)
    assert made.exit_code == 0 and "--coordinator" not in made.stderr and "--db" in made.stderr, made.stderr
    missing = invoke("agent", "nosuch", "--db", sqlite_store_url, env=nowhere)
    assert missing.exit_code == 1 and "127.0.0.1:9" not in missing.output, missing.output
    both = invoke("status", sweep_id, "--coordinator", "http://127.0.0.1:9", "--db", sqlite_store_url)
    assert both.exit_code == 2 and "pass either --coordinator (a server) or --db" in both.output


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_commands_on_a_database_without_a_store_add_nothing_to_it(
    database: str, tmp_path: Path, sweep_file: Path, request: pytest.FixtureRequest
) -> None:
    # Someone else's database, named by mistake: before, a status added sweeper's tables to it.
    from sqlalchemy import create_engine, inspect, text

    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'theirs.db'}"
    else:
        url = request.getfixturevalue("postgres_store_url")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE foo (x INTEGER)"))
    for command in (["status"], ["trials", "abc"], ["agent", "abc"], ["stop", "abc"]):
        result = invoke(*command, "--db", url)
        assert result.exit_code == 1 and "no sweeper store in " in result.output, result.output
        assert "holds none of sweeper's tables; check the URL" in result.output
    assert inspect(engine).get_table_names() == ["foo"]
    engine.dispose()
    made = invoke("sweep", str(sweep_file), "--db", url)  # a command that makes sweeps makes the store
    assert made.exit_code == 0, made.output
    assert invoke("status", "--db", url).exit_code == 0


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    result = invoke("status", env={"SWEEPER_DB": "foo://x"})
    assert result.exit_code == 1 and "unsupported store URL 'foo://x'" in result.output
    assert result.output.rstrip().endswith("(from SWEEPER_DB)"), result.output
    typed = invoke("status", "--db", "foo://x")
    assert "unsupported store URL 'foo://x'" in typed.output and "SWEEPER_DB" not in typed.output
    result = invoke("status", "abc", env={"SWEEPER_COORDINATOR": "htp://x"})
    assert result.exit_code == 1 and result.output.rstrip().endswith(
        "got 'htp://x' (from SWEEPER_COORDINATOR)"
    )


def sweeper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_commands_against_a_server(sweep_file: Path, tmp_path: Path) -> None:
    with serving(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
        env |= {
            "SWEEPER_COORDINATOR": server.url,
            "SWEEPER_TOKEN": TOKEN,
            "SWEEPER_DB": "sqlite:///nowhere.db",
        }
        none = sweeper("status", env=env)
        assert none.stdout == "no sweeps yet: create one with 'sweeper sweep FILE'\n", none.stdout
        created = sweeper("sweep", str(sweep_file), env=env)
        assert created.returncode == 0, created.stderr
        sweep_id = created.stdout.strip()
        # Where the token goes is named; the token itself is not printed.
        hint = f"sweeper agent {sweep_id} --coordinator {server.url}, and the server's token in --token or"
        assert hint in created.stderr and TOKEN not in created.stderr, created.stderr
        assert sweeper("pause", sweep_id, env=env).stdout == f"sweep {sweep_id} is paused\n"
        status = sweeper("status", sweep_id, env=env)
        assert status.returncode == 0 and f"sweep {sweep_id} (grid) is paused: no trials yet" in status.stdout
        assert server.log().count(f"GET /api/v1/sweeps/{sweep_id}/trials ") == 1  # the trials are sent once
        every = sweeper("status", env=env)  # each sweep's counts, not its trials
        assert every.returncode == 0 and f"{sweep_id}  grid     paused" in every.stdout, every.stdout
        assert "no trials yet" in every.stdout and server.log().count(f"/sweeps/{sweep_id}/trials ") == 1
        listed = sweeper("trials", sweep_id, "--format", "json", env=env)
        assert listed.returncode == 0 and json.loads(listed.stdout) == []
        for typo in (f"{sweep_id}/", "../x"):  # the server redirects the first, has no route for the second
            wrong = sweeper("status", typo, env=env)
            assert wrong.returncode == 1 and "(is the id right" in wrong.stderr, wrong.stderr
        for empty in ("", "."):  # no segment of a URL: said so, where the server was asked for /sweeps/
            wrong = sweeper("agent", empty, env=env)
            assert wrong.returncode == 1 and f"no sweep '{empty}'" in wrong.stderr, wrong.stderr
            assert "redirect" not in wrong.stderr
        no_token = sweeper("status", env={**env, "SWEEPER_TOKEN": ""})
        assert no_token.returncode == 1 and "--token or the SWEEPER_TOKEN" in no_token.stderr
        tls = sweeper("status", env={**env, "SWEEPER_COORDINATOR": server.url.replace("http:", "https:")})
        assert tls.returncode == 1 and "speaks plain HTTP, not TLS: use an http:// URL" in tls.stderr, (
            tls.stderr
        )
        # An agent gives up at once, where it waits for a server that is not up yet.
        agent = sweeper(
            "agent", sweep_id, env={**env, "SWEEPER_COORDINATOR": server.url.replace("http:", "https:")}
        )
        assert agent.returncode == 1 and "speaks plain HTTP, not TLS: use an http:// URL" in agent.stderr
        assert "yet" not in agent.stderr and "is `sweeper server` running" not in agent.stderr, agent.stderr
        assert not Path("nowhere.db").exists()  # the server's store was used, not a local one
        assert [s.id for s in server.client().list_sweeps()] == [sweep_id]


@pytest.mark.parametrize("restarted", ["with another token", "on another database"])
def test_an_agent_whose_server_changed_under_it_exits_with_one_line(
    sweep_file: Path, tmp_path: Path, restarted: str
) -> None:
    """An agent waiting on a paused sweep; its server restarted with another token, or on another
    database: it exits 1 with one line that says what changed (it ended in a traceback)."""
    (tmp_path / "train.py").write_text("print('never runs: the sweep is paused')\n")
    db = f"sqlite:///{tmp_path / 'server.db'}"
    server = start_server(db, tmp_path / "server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    env |= {"SWEEPER_COORDINATOR": server.url, "SWEEPER_TOKEN": TOKEN}
    agent = None
    try:
        sweep_id = sweeper("sweep", str(sweep_file), env=env).stdout.strip()
        assert sweeper("pause", sweep_id, env=env).returncode == 0
        agent = subprocess.Popen(
            [SWEEPER, "agent", sweep_id, "--max-backoff", "0.5"],
            cwd=tmp_path,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert agent.stdout is not None
        started = agent.stdout.readline()  # said once its checks against this server passed
        assert started.startswith(f"agent on sweep {sweep_id}"), started
        server.stop()
        if restarted == "with another token":
            server = start_server(db, tmp_path / "server", port=server.port, token="another-token")
            expected = "no longer takes this agent's token"
        else:
            server = start_server(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "server", port=server.port)
            expected = f"no longer knows sweep {sweep_id}"
        out, err = agent.communicate(timeout=120)
        out = started + out
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        server.stop()
    assert agent.returncode == 1, out + err
    assert "Traceback" not in err and f"Error: the coordinator at {server.url} {expected}" in err, err


def test_ctrl_c_stops_a_server_cleanly_with_exit_130(tmp_path: Path) -> None:
    # Before: uvicorn's shutdown, then click's "Aborted!" and exit 1.
    server = start_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server")
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(30) == 130
    log = server.log()
    assert log.rstrip().endswith("sweeper server: stopped") and "Aborted" not in log, log


def test_trials_csv_names_each_column_once() -> None:
    import csv
    import io

    from sweeper.cli.inspect import trials_to_csv
    from sweeper.trials import Trial, TrialState

    # ``lr`` swept and logged (a scheduler's current value), a parameter named ``state``.
    trial = Trial(1, "sw", 1, {"lr": 0.1, "state": "warm"}, TrialState.FINISHED, 0.0, summary={"lr": 0.05})
    member = Trial(2, "sw", 2, {"lr": 0.08}, TrialState.RUNNING, 0.0, member=1, restore_from="ckpt/sw/1")
    header, row, pbt_row = list(csv.reader(io.StringIO(trials_to_csv([trial, member]))))
    assert pbt_row[-3:-1] == ["1", "ckpt/sw/1"]  # the PBT lineage
    # A parameter whose values are dicts is one column, beside a dotted name it would flatten onto.
    from sweeper.spec import parse_sweep

    spec = parse_sweep(
        {"method": "grid", "parameters": {"opt": {"values": [{"lr": 1}]}, "opt.lr": {"values": [100]}}}
    )
    both = Trial(3, "sw", 3, {"opt": {"lr": 1}, "opt.lr": 100}, TrialState.FINISHED, 0.0)
    nested_header, nested_row = list(csv.reader(io.StringIO(trials_to_csv([both], spec))))
    nested = dict(zip(nested_header, nested_row, strict=True))
    assert nested["opt.lr"] == "100" and nested["opt"] == '{"lr": 1}'  # JSON, as any reader parses it
    assert len(set(header)) == len(header), header
    assert dict(zip(header, row, strict=True)) == {
        "number": "1",
        "state": "finished",
        "lr": "0.1",
        "config:state": "warm",
        "metric:lr": "0.05",
        "exit_code": "",
        "stop_reason": "",
        "retry_of": "",
        "member": "",
        "restore_from": "",
        "reason": "",
    }


def test_the_agent_hint_of_a_postgresql_sweep_hides_the_password(
    sweep_file: Path, postgres_store_url: str
) -> None:
    result = invoke("sweep", str(sweep_file), "--db", postgres_store_url)
    assert result.exit_code == 0, result.output
    password = make_url(postgres_store_url).password
    assert f"sweeper agent {result.stdout.strip()} --db 'postgresql://" in result.stderr
    assert ":***@" in result.stderr and f":{password}@" not in result.stderr, result.stderr


def test_the_trials_table_names_its_columns(sweep_file: Path, sqlite_store_url: str) -> None:
    from sweeper.connect import connect
    from sweeper.protocol import TrialOutcome
    from sweeper.trials import MetricPoint, TrialState

    sweep_id = invoke("sweep", str(sweep_file), "--db", sqlite_store_url).stdout.strip()
    assert invoke("trials", sweep_id, "--db", sqlite_store_url).stdout == "no trials yet\n"
    coordinator = connect(db=sqlite_store_url)
    trial = coordinator.next_trial(sweep_id, AgentInfo("a", "h"))
    assert isinstance(trial, Assignment)
    coordinator.report_metrics(trial.trial_id, trial.lease_id, [MetricPoint("loss", 0.25, 1, 1, 2.0)])
    coordinator.finish_trial(trial.trial_id, trial.lease_id, TrialOutcome(TrialState.FINISHED, exit_code=0))
    header, row = invoke("trials", sweep_id, "--db", sqlite_store_url).stdout.splitlines()
    assert header.split() == ["trial", "state", "config", "metrics"]
    assert row.startswith("    1  finished ") and row.endswith("  loss=0.25"), row
    assert row.index("loss=") == header.index("metrics")  # under its header


def test_trials_in_json_come_a_page_at_a_time_and_whole(tmp_path: Path) -> None:
    # More trials than two pages: every one once, in order, with its curves, embedded and remote.
    db = f"sqlite:///{tmp_path / 'pages.db'}"
    with Coordinator(open_store(db)) as coordinator:
        raw = {"method": "grid", "program": "train.py", "parameters": {"x": {"values": list(range(45))}}}
        sweep_id = coordinator.create_sweep(parse_sweep(raw)).id
        for _ in range(45):
            lease = coordinator.next_trial(sweep_id, AgentInfo(name="a", host="h"))
            assert isinstance(lease, Assignment)
            x = lease.config["x"]
            points = [MetricPoint("loss", x + step / 10, step, step + 1, 0.0) for step in range(3)]
            coordinator.report_metrics(lease.trial_id, lease.lease_id, points)
            coordinator.finish_trial(lease.trial_id, lease.lease_id, TrialOutcome(TrialState.FINISHED, 0))
        whole = [trial_to_json(t) for t in coordinator.trials(sweep_id, with_history=True)]
    expected = json.dumps(whole, indent=2) + "\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    embedded = sweeper("trials", sweep_id, "--format", "json", "--db", db, env=env)
    assert embedded.returncode == 0 and embedded.stdout == expected, embedded.stderr
    assert [t["config"]["x"] for t in json.loads(embedded.stdout)] == list(range(45))
    with serving(db, tmp_path / "server") as server:
        remote = sweeper(
            "trials",
            sweep_id,
            "--format",
            "json",
            env=env | {"SWEEPER_COORDINATOR": server.url, "SWEEPER_TOKEN": TOKEN},
        )
        assert remote.returncode == 0 and remote.stdout == expected, remote.stderr
        assert server.log().count(f"GET /api/v1/sweeps/{sweep_id}/trials?history=true") == 3
