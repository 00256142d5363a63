"""``sweeper run`` end to end: the installed command in a subprocess, real trial processes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from cli_support import sweep_id_of

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
SWEEPER = str(Path(sys.executable).parent / "sweeper")


def write_sweep(tmp_path: Path, parameters: dict, **extra: object) -> Path:
    sweep = {
        "method": "grid",
        "program": str(SCRIPTS / "e2e_trial.py"),
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": parameters,
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweeper_cmd(
    tmp_path: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWEEPER, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def trials_json(tmp_path: Path, sweep_id: str) -> list[dict]:
    out = sweeper_cmd(tmp_path, "trials", sweep_id, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_grid_of_12_with_3_agents_runs_each_combination_once(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path, {"x": {"values": [1, 2, 3]}, "y": {"values": [10, 20, 30, 40]}, "epochs": {"value": 3}}
    )
    result = sweeper_cmd(tmp_path, "run", str(path), "--agents", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = sweep_id_of(result.stdout)
    assert f"sweep {sweep_id} (grid) is finished: 12 finished" in result.stdout
    assert "best: trial" in result.stdout and "x=3 y=40" in result.stdout

    trials = trials_json(tmp_path, sweep_id)
    assert len(trials) == 12
    assert all(t["state"] == "finished" for t in trials)
    combos = Counter((t["config"]["x"], t["config"]["y"]) for t in trials)
    assert set(combos) == {(x, y) for x in (1, 2, 3) for y in (10, 20, 30, 40)}
    assert set(combos.values()) == {1}
    for t in trials:
        x, y = t["config"]["x"], t["config"]["y"]
        assert t["curves"]["score"] == [[e, x * 10 + y + e] for e in range(3)]
        assert t["metrics"]["score"] == x * 10 + y + 2
    assert len({t["agent"] for t in trials}) >= 2  # the work was shared


def test_a_metric_no_trial_logs_is_pointed_out(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": [1, 2]}}, metric={"name": "scroe", "goal": "maximize"})
    result = sweeper_cmd(tmp_path, "run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr  # the trials themselves ran
    assert result.stdout.count("(no scroe logged)") == 2, result.stdout
    hint = "none of the 2 trial(s) that ended logged the sweep's metric 'scroe' (they logged epoch, score);"
    assert hint in result.stderr, result.stderr
    status = sweeper_cmd(tmp_path, "status", sweep_id_of(result.stdout))
    assert status.returncode == 0 and hint in status.stderr, status.stderr


def test_wandb_switched_off_is_named_when_no_metric_arrives(tmp_path: Path) -> None:
    """WANDB_MODE=disabled: wandb.init() gives a run whose log() does nothing, for W&B and for
    sweeper alike; the hint names the setting rather than the sweep file."""
    pytest.importorskip("wandb")
    program = tmp_path / "train.py"
    program.write_text("import wandb\nrun = wandb.init()\nrun.log({'score': 1.0})\nrun.finish()\n")
    sweep = {
        "method": "grid",
        "program": str(program),
        "metric": {"name": "score"},
        "parameters": {"x": {"value": 1}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    result = sweeper_cmd(tmp_path, "run", "sweep.yaml", env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(they logged no metric at all); fix metric.name" in result.stderr, result.stderr
    assert "WANDB_MODE=disabled makes wandb.log do nothing: use WANDB_MODE=offline" in result.stderr


def test_a_metric_never_finite_is_pointed_out(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": ["nan", "inf"]}})  # a score of NaN, then infinity
    result = sweeper_cmd(tmp_path, "run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    hint = "the last value of the sweep's metric 'score' is NaN or infinite in every trial that logged it (2)"
    assert hint in result.stderr, result.stderr


def test_crashing_trial_is_recorded_and_retried_once_and_the_sweep_goes_on(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": [1, 2, 3]}, "fail_when": {"value": 2}})
    result = sweeper_cmd(tmp_path, "run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed    exit 3" in result.stdout and "refusing x=2" in result.stdout
    trials = trials_json(tmp_path, sweep_id_of(result.stdout))
    by_state = Counter(t["state"] for t in trials)
    assert by_state == {"finished": 2, "failed": 2}  # x=2 failed, was retried once, failed again
    failed = [t for t in trials if t["state"] == "failed"]
    assert all(t["exit_code"] == 3 and "refusing x=2" in t["stderr_tail"] for t in failed)
    assert [t["reason"] for t in failed] == ["refusing x=2"] * 2  # the line the progress showed
    table = sweeper_cmd(tmp_path, "trials", sweep_id_of(result.stdout)).stdout
    assert table.count("why: refusing x=2") == 2 and "why:" not in table.replace("why: refusing x=2", ""), (
        table
    )
    assert failed[1]["retry_of"] == failed[0]["number"]
    assert f"fail_when=2 x=2  (retry of trial {failed[0]['number']})" in result.stdout


def test_an_agent_gives_up_after_three_failed_trials_in_a_row(tmp_path: Path) -> None:
    # A random search has no end of its own: without the limit a broken script would fail forever.
    parameters = {"x": {"value": 2}, "y": {"min": 0.0, "max": 1.0}, "fail_when": {"value": 2}}
    path = write_sweep(tmp_path, parameters, method="random")
    result = sweeper_cmd(tmp_path, "run", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: 3 trials in a row failed (the last, trial 3: refusing x=2" in result.stderr
    assert "is stopped: 3 failed" in result.stdout  # the sweep does not stay running with no agent
    sweep_id = sweep_id_of(result.stdout)
    trials = trials_json(tmp_path, sweep_id)
    assert [t["state"] for t in trials] == ["failed"] * 3
    assert trials[1]["retry_of"] == 1  # the first configuration has used its retry
    # Running the file again makes a new sweep, and says which stopped one could go on instead.
    again = sweeper_cmd(tmp_path, "run", str(path))
    said = f"note: sweep {sweep_id}, made from the same sweep configuration, was stopped before it was done"
    assert said in again.stderr, again.stderr
    assert sweep_id_of(again.stdout) != sweep_id
    # Resumed (the script fixed, say), the first configuration runs again before anything new.
    assert f"sweeper resume {sweep_id} && sweeper agent {sweep_id}\n" in result.stderr
    assert sweeper_cmd(tmp_path, "resume", sweep_id).returncode == 0
    sweeper_cmd(tmp_path, "agent", sweep_id, "--count", "1")
    assert trials_json(tmp_path, sweep_id)[3]["retry_of"] == 2


def test_an_agent_that_cannot_make_trial_folders_stops_before_it_takes_a_trial(tmp_path: Path) -> None:
    """Its own folder is at fault, not the trial (a read-only file system, a container's root): it
    says so and stops, where each trial used to fail in turn and use up its configuration."""
    db = f"sqlite:///{tmp_path / 'store.db'}"  # the store lives elsewhere: only trial folders fail
    (tmp_path / ".sweeper").write_text("not a folder")
    path = write_sweep(tmp_path, {"x": {"values": [1, 2, 3]}})
    result = sweeper_cmd(tmp_path, "run", str(path), "--db", db)
    assert result.returncode == 1, result.stdout + result.stderr
    said = f"error: cannot make trial folders in {tmp_path / '.sweeper' / 'trials'}: Not a directory; "
    assert said in result.stderr and "this agent stops before it takes a trial" in result.stderr, (
        result.stderr
    )
    sweep_id = sweep_id_of(result.stdout)
    (tmp_path / ".sweeper").unlink()
    assert sweeper_cmd(tmp_path, "resume", sweep_id, "--db", db).returncode == 0
    agent = sweeper_cmd(tmp_path, "agent", sweep_id, "--db", db)
    assert agent.returncode == 0, agent.stdout + agent.stderr
    listed = sweeper_cmd(tmp_path, "trials", sweep_id, "--db", db, "--format", "json")
    trials = json.loads(listed.stdout)
    assert [(t["state"], t["config"]["x"]) for t in trials] == [
        ("finished", 1),
        ("finished", 2),
        ("finished", 3),
    ]
    # Where nothing finished, the hint to see why names the store, as it was given.
    failing = write_sweep(tmp_path, {"x": {"values": [2]}, "fail_when": {"value": 2}})
    failed = sweeper_cmd(tmp_path, "run", str(failing), "--db", db, "--max-failures", "0")
    hint = f"error: no trial finished; to see why: sweeper trials {sweep_id_of(failed.stdout)} --db {db}\n"
    assert hint in failed.stderr, failed.stderr  # the store named, as it was given


def test_an_agent_told_never_to_stop_waits_for_its_folder_to_be_fixed(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    (tmp_path / ".sweeper").write_text("not a folder")
    path = write_sweep(tmp_path, {"x": {"values": [1, 2]}})
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        run = subprocess.Popen(
            [SWEEPER, "run", str(path), "--db", db, "--max-failures", "0"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    deadline = time.monotonic() + 60
    while "this agent tries again in" not in errors.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    (tmp_path / ".sweeper").unlink()  # fixed, say
    out, _ = run.communicate(timeout=120)
    err = errors.read_text()
    assert run.returncode == 0, out + err
    assert "cannot make trial folders in" in err and "this agent tries again in" in err, err
    assert "is finished: 2 finished" in out, out


def test_a_sweep_whose_every_trial_failed_exits_1(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": [2]}, "fail_when": {"value": 2}})
    result = sweeper_cmd(tmp_path, "run", str(path), "--max-failures", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    sweep_id = sweep_id_of(result.stdout)
    assert f"error: no trial finished; to see why: sweeper trials {sweep_id}\n" in result.stderr
    assert [t["state"] for t in trials_json(tmp_path, sweep_id)] == ["failed", "failed"]  # tried, retried


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigint_stops_every_trial_and_leaves_no_process(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    path = write_sweep(
        tmp_path,
        {
            "x": {"values": [1, 2, 3, 4]},
            "epochs": {"value": 1000},
            "sleep": {"value": 0.2},
            "pid_dir": {"value": str(pid_dir)},
        },
    )
    proc = subprocess.Popen(
        [SWEEPER, "run", str(path), "--agents", "2", "--grace", "3"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    pids: list[int] = []
    while len(pids) < 4 and time.monotonic() < deadline:  # a file may be read before it is written
        time.sleep(0.1)
        pids = [int(p) for f in pid_dir.glob("*.pids") for p in f.read_text().split()]
    assert len(pids) == 4, "two trials, each with a grandchild, should be running"
    time.sleep(0.5)  # let some metrics arrive
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert [p for p in pids if _alive(p)] == []
    trials = trials_json(tmp_path, sweep_id_of(out))
    assert [t["state"] for t in trials] == ["lost", "lost"]  # interrupted: no result, run again later
    assert all("Ctrl-C" in t["stop_reason"] for t in trials)
    assert all(t["curves"].get("score") for t in trials)
    status = sweeper_cmd(tmp_path, "status", sweep_id_of(out))
    assert "is stopped: 2 lost" in status.stdout
    sweep_id = sweep_id_of(out)
    going_on = (
        f"to go on (the trials cut short run again): sweeper resume {sweep_id} && sweeper agent {sweep_id}"
        " --slots 2\n"
    )
    assert going_on in err, err


def test_the_way_to_go_on_names_the_folder_the_store_and_the_parallelism(tmp_path: Path) -> None:
    """Run from above the sweep's folder (sweeper run finds the program beside the file): an agent
    must start where the program is, on this store, with as many trials at once."""
    folder = tmp_path / "my sub"  # a name with a space: the commands are pasted into a shell
    folder.mkdir()
    (folder / "e2e_trial.py").write_text((SCRIPTS / "e2e_trial.py").read_text())
    parameters = {"x": {"value": 2}, "y": {"min": 0.0, "max": 1.0}, "fail_when": {"value": 2}}
    (folder / "sweep.yaml").write_text(
        yaml.safe_dump({"method": "random", "program": "e2e_trial.py", "parameters": parameters})
    )
    result = sweeper_cmd(tmp_path, "run", "my sub/sweep.yaml", "--agents", "2", "--max-failures", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    sweep_id = sweep_id_of(result.stdout)
    db = shlex.quote(f"sqlite:///{tmp_path / '.sweeper' / 'sweeper.db'}")
    said = "once it is fixed (the configurations that failed run again): "
    (line,) = [line.removeprefix(said) for line in result.stderr.splitlines() if line.startswith(said)]
    assert line == (
        f"cd {shlex.quote(str(folder))} && sweeper resume {sweep_id} --db {db} "
        f"&& sweeper agent {sweep_id} --db {db} --slots 2"
    ), result.stderr
    # The commands work as printed, pasted into a shell anywhere (the agent left out: it would run).
    resume = line.rsplit(" && ", 1)[0]
    path = f"{Path(SWEEPER).parent}{os.pathsep}{os.environ['PATH']}"
    resumed = subprocess.run(
        ["bash", "-c", resume], cwd="/", env={**os.environ, "PATH": path}, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"sweep {sweep_id} is running" in resumed.stdout, resumed.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "bad.yaml: file not found"),
        ("method: grid\nparameters: {x: {values: [1, 2]\n", "line"),
        ("method: gird\nprogram: t.py\nparameters: {x: {values: [1]}}\n", "did you mean 'grid'"),
    ],
    ids=["missing-file", "malformed-yaml", "unknown-method"],
)
def test_bad_sweep_files_give_a_message_and_exit_2(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_text(content)
    result = sweeper_cmd(tmp_path, "run", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tracker_that_cannot_be_set_up_is_refused_before_anything_runs(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    path = write_sweep(tmp_path, {"x": {"values": [1]}})
    result = sweeper_cmd(tmp_path, "run", str(path), "--mlflow", "ftp://nowhere")
    assert result.returncode == 2, result.stdout + result.stderr
    # The experiment is the one stored with the sweep (none named: sweeper's default).
    said = (
        f"{path}: mlflow: cannot log (integrations.mlflow.tracking_uri='ftp://nowhere', "
        "integrations.mlflow.experiment='sweeper'): "
    )
    assert said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".sweeper").exists()  # no store, so no sweep and no trial


def test_an_mlflow_server_address_without_its_scheme_is_refused_with_the_uri_meant(tmp_path: Path) -> None:
    """MLflow takes 127.0.0.1:5000 for a folder and fails on its file store's deprecation."""
    pytest.importorskip("mlflow")
    path = write_sweep(tmp_path, {"x": {"values": [1]}})
    typed = sweeper_cmd(tmp_path, "run", str(path), "--mlflow", "127.0.0.1:5000")
    assert typed.returncode == 2, typed.stdout + typed.stderr
    assert "integrations.mlflow.tracking_uri: expected a URI such as http://127.0.0.1:5000" in typed.stderr
    env = {**os.environ, "MLFLOW_TRACKING_URI": "localhost:5000"}
    done = sweeper_cmd(tmp_path, "run", str(path), "--mlflow", env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MLFLOW_TRACKING_URI: expected a URI such as http://localhost:5000" in done.stderr, done.stderr
    assert "Traceback" not in typed.stderr + done.stderr
    assert not (tmp_path / ".sweeper").exists() and not (tmp_path / "localhost:5000").exists()


def test_missing_program_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("method: grid\nprogram: nowhere.py\nparameters: {x: {values: [1]}}\n")
    result = sweeper_cmd(tmp_path, "run", str(path))
    assert result.returncode == 1
    assert "program: 'nowhere.py' not found" in result.stderr
    assert "Traceback" not in result.stderr


MODULE_TRIAL = """\
import sweeper

run = sweeper.init(config={"x": 0})
run.log({"score": float(run.config.x)})
run.finish()
"""


def test_program_run_as_a_module_is_not_looked_up_as_a_file(tmp_path: Path) -> None:
    # W&B's pattern for a package: program names a module, the command runs it with -m.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(MODULE_TRIAL)
    sweep = {
        "method": "grid",
        "program": "pkg.train",
        "command": ["${env}", "${interpreter}", "-m", "${program}", "${args}"],
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {"x": {"values": [1, 2]}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    result = sweeper_cmd(tmp_path, "run", "sweep.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    trials = trials_json(tmp_path, sweep_id_of(result.stdout))
    assert sorted((t["state"], t["metrics"]["score"]) for t in trials) == [
        ("finished", 1.0),
        ("finished", 2.0),
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["${env}", "${interpreter}", "${program}", "${args}"],  # a file, though it reads as a module
        ["${env}", "${interpreter}", "-m", "pdb", "${program}", "${args}"],  # -m, but of another module
    ],
    ids=["no-m", "m-of-another-module"],
)
def test_program_run_as_a_file_is_still_looked_up(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "train.py").write_text(MODULE_TRIAL)
    sweep = {
        "method": "grid",
        "program": "pkg.train",
        "command": command,
        "parameters": {"x": {"values": [1]}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    result = sweeper_cmd(tmp_path, "run", "sweep.yaml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "program: 'pkg.train' not found" in result.stderr
    assert result.stdout == ""  # refused before a sweep was made


def test_unknown_sweep_id_is_a_clear_error(tmp_path: Path) -> None:
    made = sweeper_cmd(tmp_path, "sweep", str(write_sweep(tmp_path, {"x": {"values": [1]}})))
    result = sweeper_cmd(tmp_path, "status", "nosuch")
    assert result.returncode == 1
    assert f"no sweep with id 'nosuch' in this store (recent sweeps: {made.stdout.strip()})" in result.stderr


@pytest.mark.parametrize("where", [(), ("--db", "sweeper.dbb")], ids=["here", "misspelt --db"])
@pytest.mark.parametrize("command", [("status",), ("trials", "abc"), ("cancel", "abc"), ("agent", "abc")])
def test_commands_on_existing_sweeps_make_no_store(tmp_path: Path, command: tuple, where: tuple) -> None:
    result = sweeper_cmd(tmp_path, *command, *where)
    assert result.returncode == 1, result.stdout + result.stderr
    if where:
        missing = tmp_path / "sweeper.dbb"
        assert f"no store at {missing} (--db or SWEEPER_DB: sweeper.dbb): check the path;" in result.stderr
    else:
        assert f"no sweeper store in {tmp_path} (no .sweeper/sweeper.db):" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made: a typo leaves no empty store behind


def test_output_closed_early_is_not_blamed_on_the_coordinator(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": [1]}})
    for _ in range(2):
        assert sweeper_cmd(tmp_path, "sweep", str(path)).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `sweeper status | head -0` would
    with os.fdopen(write_end, "w") as closed:
        listed = subprocess.run(
            [SWEEPER, "status"], cwd=tmp_path, stdout=closed, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert listed.returncode == 1
    assert "sweeper server" not in listed.stderr and "Broken pipe" not in listed.stderr, listed.stderr


def test_trials_csv_has_a_row_per_trial(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": [1, 2]}, "y": {"value": 5}})
    result = sweeper_cmd(tmp_path, "run", str(path))
    out = sweeper_cmd(tmp_path, "trials", sweep_id_of(result.stdout), "--format", "csv")
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("number,state,")
    assert "score" in lines[0] and "x" in lines[0].split(",")
    assert len(lines) == 3 and all(",finished," in line for line in lines[1:])


def test_count_limits_the_trials_run(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, {"x": {"values": [1, 2, 3, 4, 5]}})
    result = sweeper_cmd(tmp_path, "run", str(path), "--count", "2", "--agents", "2")
    assert result.returncode == 0, result.stderr
    sweep_id = sweep_id_of(result.stdout)
    assert len(trials_json(tmp_path, sweep_id)) == 2
    # The sweep is left running, and says how to go on with it.
    hint = f"more to run: sweeper agent {sweep_id} --slots 2"
    assert result.stderr.splitlines()[-1] == hint, result.stderr
    went_on = sweeper_cmd(tmp_path, *hint.split(": ")[1].split()[1:], "--count", "1")
    assert went_on.returncode == 0, went_on.stderr
    assert len(trials_json(tmp_path, sweep_id)) == 3


def test_random_sweep_honours_run_cap_and_seed(tmp_path: Path) -> None:
    params = {"x": {"distribution": "uniform", "min": 0, "max": 1}, "y": {"min": 1, "max": 100}}
    path = write_sweep(tmp_path, params, method="random", run_cap=4, sweeper={"seed": 11})
    first = sweeper_cmd(tmp_path, "run", str(path))
    second = sweeper_cmd(tmp_path, "run", str(path))
    assert first.returncode == 0 and second.returncode == 0
    configs = [[t["config"] for t in trials_json(tmp_path, sweep_id_of(r.stdout))] for r in (first, second)]
    assert len(configs[0]) == 4
    assert configs[0] == configs[1]  # same seed, same suggestions


def test_readme_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "sweeps" / "digits-mlp" / "grid.yaml"
    result = sweeper_cmd(tmp_path, "run", str(example), "--count", "2", "--agents", "2", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = trials_json(tmp_path, sweep_id_of(result.stdout))
    assert len(trials) == 2 and all(t["state"] == "finished" for t in trials)
    assert all(
        len(t["curves"]["val_acc"]) == 10 and t["metrics"]["val_acc"] > 0.5 for t in trials
    )  # chance is 0.1
