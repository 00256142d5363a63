"""The W&B adapter offline, read back from what each run wrote (``wandb leet inspect --json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweeper.integrations.settings import wandb_settings

from sweeper.trials import TrialState

pytest.importorskip("wandb")
from trackers_support import (  # noqa: E402
    TRIAL_SCRIPT,
    captured_curve,
    offline_runs,
    run_sweep,
    sweeper_cli,
    trial_script_sweep,
)

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_the_sweep_files_own_project_and_entity_apply_where_the_wandb_block_names_none(
    wandb_env: Path,
) -> None:
    program = wandb_env / "train.py"
    program.write_text(TRIAL_SCRIPT)
    sweep = {
        "method": "grid",
        "project": "top-level-project",
        "entity": "top-level-entity",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"mode": {"value": "ok"}, "lr": {"values": [0.25, 0.5]}},
        "integrations": {"wandb": {"mode": "offline"}},
    }
    _, _, trials = run_sweep(wandb_env, sweep, program, agents=1)
    assert [t.state for t in trials] == [TrialState.FINISHED, TrialState.FINISHED]
    runs = offline_runs(wandb_env)
    assert len(runs) == 3  # two trials and the sweep's own run
    assert {(r["project"], r["entity"]) for r in runs} == {("top-level-project", "top-level-entity")}
    # The sweep's run sums the sweep up with its best value, not the last trial's (0.5 / 3).
    (sweep_run,) = [r for r in runs if r["run"].get("job_type") == "sweep"]
    assert sweep_run["summary"]["loss"] == sweep_run["summary"]["best_loss"] == pytest.approx(0.25 / 3)


def test_sweep_logs_one_run_per_trial_and_a_sweep_run(wandb_env: Path) -> None:
    program = wandb_env / "train.py"
    program.write_text(TRIAL_SCRIPT)
    sweep = {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"mode": {"values": ["ok", "fail", "hang"]}, "lr": {"value": 0.5}},
        "sweeper": {"max_retries": 0},
        "integrations": {"wandb": {"project": "offline-test", "mode": "offline"}},
    }
    _, sweep_id, trials = run_sweep(wandb_env, sweep, program)
    assert {t.config["mode"]: t.state for t in trials} == {
        "ok": TrialState.FINISHED,
        "fail": TrialState.FAILED,
        "hang": TrialState.STOPPED,
    }
    runs = offline_runs(wandb_env)
    by_job = {}
    for run in runs:
        by_job.setdefault(run["run"].get("job_type"), []).append(run)
    assert len(by_job["trial"]) == 3 and len(by_job["sweep"]) == 1, [r["run"] for r in runs]
    for run in by_job["trial"]:
        trial = next(t for t in trials if run["run_id"] == f"{sweep_id}-{t.number}")
        assert run["project"] == "offline-test"
        assert run["run"]["run_group"] == sweep_id
        assert {"sweeper", f"sweep-{sweep_id}", trial.state.value} <= set(run["tags"])
        assert {k: v for k, v in run["config"].items() if not k.startswith("_")} == {
            "mode": trial.config["mode"],
            "lr": 0.5,
        }
        rows = [(row["_step"], row["loss"]) for row in run["history"] if "loss" in row]
        assert rows == trial.curve("loss") == [(s, 0.5 / (s + 1)) for s in range(3)]
        assert run["summary"]["loss"] == pytest.approx(0.5 / 3)
        assert run["summary"]["sweeper_state"] == trial.state.value
        assert run["exit_code"] == {"ok": 0, "fail": 1, "hang": 143}[trial.config["mode"]]
    (sweep_run,) = by_job["sweep"]
    assert sweep_run["run"]["run_group"] == sweep_id
    assert sweep_run["config"]["method"] == "grid"
    assert sweep_run["summary"]["best_loss"] == pytest.approx(0.5 / 3)
    assert sweep_run["summary"]["leaderboard"]["_type"] == "table-file"


def test_the_sweep_run_of_a_sweep_stopped_as_its_agents_gave_up_says_stopped(wandb_env: Path) -> None:
    trial_script_sweep(
        wandb_env,
        {"mode": {"value": "fail"}, "lr": {"values": [0.5, 0.25]}},
        integrations={"wandb": {"project": "gives-up", "mode": "offline"}},
    )
    ran = sweeper_cli("run", "sweep.yaml", "--max-failures", "1", cwd=wandb_env)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "sweeper resume" in ran.stderr  # stopped, so it can be taken up again
    (sweep_run,) = [run for run in offline_runs(wandb_env) if run["run"].get("job_type") == "sweep"]
    assert sweep_run["summary"]["sweeper_state"] == "stopped"
    assert sweep_run["exit_code"] == 1


def test_unchanged_wandb_script_feeds_the_coordinator(wandb_env: Path) -> None:
    """A script that only knows wandb: values via arguments and wandb.config, metrics via wandb.log,
    which reach the coordinator step by step; its own run is the trial's run, grouped by sweep."""
    sweep = {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
        "parameters": {
            "lr": {"values": [0.1, 0.2, 0.4, 0.8]},
            "epochs": {"value": 6},
            "pause": {"value": 0.2},
        },
        "integrations": {"wandb": {"project": "unchanged", "mode": "offline"}},
    }
    _, sweep_id, trials = run_sweep(
        wandb_env, sweep, SCRIPTS / "wandb_script.py", agents=2, stop_when_hanging=False
    )
    assert len(trials) == 4
    runs = {r["run_id"]: r for r in offline_runs(wandb_env)}
    for trial in trials:
        lr = trial.config["lr"]
        curve = captured_curve(trial)
        stdout = (wandb_env / ".sweeper" / "trials" / sweep_id / str(trial.number) / "stdout.log").read_text()
        seen = json.loads(next(x for x in stdout.splitlines() if x.startswith("SEEN=")).removeprefix("SEEN="))
        assert seen["args"]["lr"] == seen["config"]["lr"] == lr
        run = runs.get(f"{sweep_id}-{trial.number}")  # the script's own run, no second one from the adapter
        # Stopped runs are complete too: the script is signalled before wandb's service process.
        assert run is not None, f"trial {trial.number} ({trial.state.value}) left no W&B run"
        assert run["run"]["run_group"] == sweep_id and run["run"]["job_type"] == "trial"
        assert run["project"] == "unchanged"
        logged = [(row["_step"], row["loss"]) for row in run["history"] if "loss" in row]
        assert logged[: len(curve)] == curve
    assert len([r for r in runs.values() if r["run"].get("job_type") == "trial"]) <= 4
    stops = [t for t in trials if t.state is TrialState.STOPPED]
    print(f"hyperband stopped {len(stops)} of {len(trials)} trial(s):", [t.stop_reason for t in stops])


ENDINGS_SCRIPT = """
import sys, wandb
run = wandb.init()
wandb.log({"loss": 0.5})
if wandb.config.end == "raise":
    raise ValueError("diverged")
if wandb.config.end == "exit2":
    sys.exit(2)
"""


def test_a_scripts_own_run_ends_as_the_script_did(wandb_env: Path) -> None:
    """The agent's own W&B runs (the sweep's) use a wandb service; a trial's run attached to it
    ended "exit 0" whatever the script did. Each trial's run has its own, as under `wandb agent`."""
    program = wandb_env / "train.py"
    program.write_text(ENDINGS_SCRIPT)
    sweep = {
        "method": "grid",
        "parameters": {"end": {"values": ["ok", "raise", "exit2"]}},
        "sweeper": {"max_retries": 0},
        "integrations": {"wandb": {"project": "endings", "mode": "offline"}},
    }
    _, sweep_id, trials = run_sweep(wandb_env, sweep, program, agents=1)
    codes = {t.config["end"]: t.exit_code for t in trials}
    assert codes == {"ok": 0, "raise": 1, "exit2": 2}
    runs = {r["run_id"]: r for r in offline_runs(wandb_env)}
    assert {t.config["end"]: runs[f"{sweep_id}-{t.number}"].get("exit_code") for t in trials} == codes


def test_the_runs_folder_comes_from_the_block_then_wandb_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved to an absolute folder when the sweep's trackers are built, not when wandb starts."""
    monkeypatch.chdir(tmp_path)
    assert wandb_settings({"dir": "runs"}, {"WANDB_DIR": "/elsewhere"}).dir == str(tmp_path / "runs")
    assert wandb_settings({}, {"WANDB_DIR": "here"}).dir == str(tmp_path / "here")
    assert wandb_settings({}, {}).dir is None


def test_each_sweep_in_one_process_writes_where_its_own_settings_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweeps, one after the other in this process, each with its own WANDB_DIR and project:
    wandb reads its variables once per process, so the adapter must pass each sweep's own."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    program = tmp_path / "train.py"
    program.write_text(TRIAL_SCRIPT)
    made = {}
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        block = {"project": f"project-{name}", "mode": "offline"}
        if name == "first":
            monkeypatch.setenv("WANDB_DIR", str(folder))
        else:  # the sweep file's own setting wins over the environment
            block["dir"] = str(folder)
        sweep = {
            "method": "grid",
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"lr": {"values": [0.1, 0.2]}},
            "integrations": {"wandb": block},
        }
        _, sweep_id, trials = run_sweep(folder, sweep, program, agents=1)
        assert [t.state for t in trials] == [TrialState.FINISHED] * 2
        made[name] = (folder, sweep_id, trials)

    for name, (folder, sweep_id, trials) in made.items():
        runs = offline_runs(folder)
        expected = {f"{sweep_id}-{t.number}" for t in trials} | {f"{sweep_id}-sweep"}
        assert {r["run_id"] for r in runs} == expected, f"{name}: {[r['run_id'] for r in runs]}"
        assert {r["project"] for r in runs} == {f"project-{name}"}


def test_a_failed_wandb_scripts_reason_is_never_one_of_wandbs_own_lines(tmp_path: Path) -> None:
    # wandb prints its own lines (where the run's data is, how to view it) on stderr.
    import os
    import subprocess
    import sys

    program = tmp_path / "train.py"
    program.write_text(
        "import sys, wandb\nwandb.init()\n"
        "if wandb.config.x == 1:\n    raise ValueError('bad learning rate')\nsys.exit(3)\n"
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"program: {program}\nmethod: grid\nparameters: {{x: {{values: [1, 2]}}}}\n"
        "sweeper: {max_retries: 0}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SWEEPER_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("sweeper")), "run", str(sweep), "--max-failures", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = next((tmp_path / ".sweeper" / "trials").glob("*/2/stderr.log")).read_text()
    assert tail.rstrip().splitlines()[-1].startswith("wandb: "), tail  # all it wrote is wandb's
    assert "trial 1 failed    exit 1" in done.stdout and ": ValueError: bad learning rate" in done.stdout
    assert "trial 2 failed    exit 3 after" in done.stdout, done.stdout
    assert done.stdout.count("(no error message on stderr)") == 1 and "wandb: " not in done.stdout, (
        done.stdout
    )
    assert "(the last, trial 2: no error message on stderr)" in done.stdout + done.stderr
