"""The example sweeps under ``sweeps/``: every sweep file validates, every example runs.

The smoke runs drive the installed ``sweeper run`` on a copy of one of the example's own sweep
files, with the budget (epochs, folds) overridden to the minimum, for two trials.
Scripts that use the sweeper API must deliver their metric curves; the W&B and MLflow scripts
must finish and must have received the trial's values through ``wandb.config`` or their arguments.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sweeper.cli import main
from sweeper.stopping.pbt import exploited_trial

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SWEEP_FILES = sorted([*SWEEPS.glob("*/*.yaml"), *SWEEPS.glob("*/*.yml")])
SWEEPER = str(Path(sys.executable).parent / "sweeper")


@dataclass(frozen=True)
class Example:
    folder: str
    sweep_file: str  # the sweep file the smoke run copies (one that needs no stopping rule)
    tiny: dict[str, Any]  # parameter values that make a trial take seconds
    api: str  # how the script reports: "sweeper", "wandb" or "mlflow"
    standalone_args: tuple[str, ...] = field(default=())
    curve_length: int = 1  # metric values each smoke trial logs
    needs: tuple[str, ...] = ("sklearn",)  # modules the script imports beyond sweeper
    says: str = ""  # what each smoke trial's stdout.log holds


EXAMPLES = [
    Example("digits-mlp", "grid.yaml", {"epochs": 1}, "sweeper"),
    Example("mlp-core", "random.yaml", {"epochs": 2}, "sweeper", ("--epochs=1", "--l1=1e-5"), 2, ("torch",)),
    Example(
        "cnn-digits",
        "random.yaml",
        {"epochs": 1},
        "sweeper",
        ("--epochs=1", "--conv_layers=3"),
        needs=("torch",),
    ),
    Example(
        "transformer-sequence", "random.yaml", {"epochs": 1}, "sweeper", ("--epochs=1",), needs=("torch",)
    ),
    Example(
        "rnn-sequence",
        "grid.yaml",
        {"epochs": 1},
        "wandb",
        ("--epochs=1", "--bidirectional=True"),
        needs=("torch", "wandb"),
    ),
    Example(
        "ddp-digits",
        "grid.yaml",
        {"epochs": 2},
        "sweeper",
        curve_length=2,
        needs=("torch", "sklearn"),
        says="training on 2 process(es)",  # torchrun started both
    ),
    Example(
        "sklearn-classic",
        "grid.yaml",
        {"folds": 2},
        "mlflow",
        ("--folds=2", "--kernel=poly"),
        2,
        ("sklearn", "mlflow"),
    ),
]


def require(modules: tuple[str, ...]) -> None:
    """Skip an example whose libraries are not installed here; in CI, which installs them, fail."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing and os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} not installed, but CI installs them (see .ci/run)")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install torch, or the extras in pyproject.toml)")


def test_every_example_folder_has_a_script_and_two_sweep_files() -> None:
    folders = sorted(
        p
        for p in SWEEPS.iterdir()
        if p.is_dir() and p.name not in ("common", "__pycache__") and not p.name.startswith(".")
    )
    assert folders, "no examples found"
    for folder in folders:
        assert (folder / "train.py").is_file(), folder
        assert len([p for p in SWEEP_FILES if p.parent == folder]) >= 2, folder
    assert {e.folder for e in EXAMPLES} == {f.name for f in folders}, "every example needs a smoke run below"


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[str(p.relative_to(SWEEPS)) for p in SWEEP_FILES])
def test_sweep_file_validates(path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert ": OK: " in result.output


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[str(p.relative_to(SWEEPS)) for p in SWEEP_FILES])
def test_sweep_file_names_its_script_and_says_what_it_shows(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# "), "start with a comment saying what the sweep shows"
    spec = yaml.safe_load(text)
    assert (path.parent / spec["program"]).is_file()
    assert spec["metric"]["name"]
    if spec["method"] in ("random", "bayes", "tpe"):
        assert "run_cap" in spec, "a search with no end of its own needs run_cap"


def test_scripts_read_the_values_agents_pass_as_arguments() -> None:
    # Loaded from its file: the examples' helpers are not an installed package.
    spec = importlib.util.spec_from_file_location("example_args", SWEEPS / "common" / "args.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_from_args = module.config_from_args
    defaults = {"learning_rate": 1e-3, "epochs": 20, "cell": "lstm", "bidirectional": False}
    # The agent writes each value with str(): 1e-05, True, [1, 2] arrive as Python literals.
    argv = ["--learning_rate=1e-05", "--bidirectional=True", "--cell=gru", "--epochs", "3", "--sizes=[1, 2]"]
    assert config_from_args(defaults, argv) == {
        "learning_rate": 1e-05,
        "epochs": 3,
        "cell": "gru",
        "bidirectional": True,
        "sizes": [1, 2],
    }
    assert config_from_args(defaults, []) == defaults
    with pytest.raises(SystemExit, match="--key=value"):
        config_from_args(defaults, ["epochs=3"])


def trial_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp_path),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    return env


def tiny_copy(example: Example, tmp_path: Path) -> Path:
    """The example's sweep file with the tiny values and the script's absolute path."""
    source = SWEEPS / example.folder / example.sweep_file
    spec = yaml.safe_load(source.read_text())
    spec["program"] = str(source.parent / spec["program"])
    for key, value in example.tiny.items():
        spec["parameters"][key] = {"value": value}
    path = tmp_path / f"{example.folder}-{example.sweep_file}"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_sweeper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SWEEPER, *args, "--db", f"sqlite:///{tmp_path / 'sweeper.db'}"],
        cwd=tmp_path,
        env=trial_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )


def failed_trials_stderr(tmp_path: Path, sweep_id: str, trials: list[dict[str, Any]]) -> str:
    """The whole stderr of each trial that did not finish: a launcher's (torchrun's) own report
    fills the stored tail, and the worker's message is above it."""
    logs = []
    for trial in trials:
        if trial["state"] != "finished":
            path = tmp_path / ".sweeper" / "trials" / sweep_id / str(trial["number"]) / "stderr.log"
            text = path.read_text(errors="replace") if path.exists() else "(no stderr.log)"
            logs.append(f"--- trial {trial['number']} ({trial['state']}), {path}:\n{text[-20000:]}")
    return "\n".join(logs)


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.folder for e in EXAMPLES])
def test_example_smoke_runs_two_trials(example: Example, tmp_path: Path) -> None:
    require(example.needs)
    sweep_file = tiny_copy(example, tmp_path)
    result = run_sweeper(tmp_path, "run", str(sweep_file), "--count", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = result.stdout.splitlines()[0].split()[1].rstrip(":")
    listing = run_sweeper(tmp_path, "trials", sweep_id, "--format", "json")
    assert listing.returncode == 0, listing.stderr
    trials = json.loads(listing.stdout)

    assert len(trials) == 2
    assert [t["state"] for t in trials] == ["finished", "finished"], failed_trials_stderr(
        tmp_path, sweep_id, trials
    )
    for trial in trials:
        for key, value in example.tiny.items():
            assert trial["config"][key] == value
    metric = yaml.safe_load(sweep_file.read_text())["metric"]["name"]
    for trial in trials:
        stdout = tmp_path / ".sweeper" / "trials" / sweep_id / str(trial["number"]) / "stdout.log"
        assert example.says in stdout.read_text()

    if example.api == "sweeper":
        for trial in trials:
            curve = trial["curves"][metric]
            assert [step for step, _ in curve] == list(range(example.curve_length))
            assert 0.0 <= trial["metrics"][metric] <= 1.0
            assert "train_loss" in trial["curves"] or "train_loss" in trial["metrics"]
    elif example.api == "wandb":
        for trial in trials:
            stdout = (
                tmp_path / ".sweeper" / "trials" / sweep_id / str(trial["number"]) / "stdout.log"
            ).read_text()
            line = next(x for x in stdout.splitlines() if x.startswith("config: "))
            seen = json.loads(line.removeprefix("config: "))
            assert {k: seen[k] for k in trial["config"]} == trial["config"]
        assert list((tmp_path / "wandb").glob("offline-run-*")), "the script wrote no offline W&B run"
    else:
        check_mlflow_runs(tmp_path, trials, metric, example.curve_length)


@pytest.mark.slow
def test_pbt_example_restarts_members_from_a_better_members_checkpoint(tmp_path: Path) -> None:
    require(("torch",))
    sweep = yaml.safe_load((SWEEPS / "mlp-core" / "pbt.yaml").read_text())
    sweep["program"] = str(SWEEPS / "mlp-core" / "train.py")
    # A restarted member starts from the donor's latest checkpoint; small batches make the epochs slow
    # enough that the donor has not finished by the time the restarted member has started.
    sweep["parameters"]["epochs"] = {"value": 60}
    sweep["parameters"]["batch_size"] = {"value": 16}
    sweep["sweeper"]["pbt"] = {"population": 3, "perturbation_interval": 10, "quantile": 0.34}
    sweep_file = tmp_path / "pbt.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    result = run_sweeper(tmp_path, "run", str(sweep_file), "--agents", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = result.stdout.splitlines()[0].split()[1].rstrip(":")
    trials = json.loads(run_sweeper(tmp_path, "trials", sweep_id, "--format", "json").stdout)

    # A member restored from a half-written checkpoint would fail here, and its retry count twice below.
    states = [(t["number"], t["state"]) for t in trials]
    assert {state for _, state in states} <= {"finished", "stopped"}, states
    exploited = [t for t in trials if t["state"] == "stopped" and t["stop_reason"].startswith("pbt: exploit")]
    restarted = [t for t in trials if t["restore_from"]]
    assert exploited and restarted
    # Each exploited member restarts from its donor's checkpoint, unless the donor had finished by
    # then (its last epoch's checkpoint leaves nothing to train; the member stands as it is). On
    # a loaded machine that happens to the last exploit.
    by_number = {t["number"]: t for t in trials}
    for stopped in exploited:
        again = [t for t in restarted if t["member"] == stopped["member"] and t["number"] > stopped["number"]]
        donor = by_number[exploited_trial(stopped["stop_reason"])]
        assert again or donor["ended_at"] <= stopped["ended_at"] + 30, (stopped, donor)
    assert {t["member"] for t in trials} == {0, 1, 2}
    # A restarted member that had epochs left carried on from the copied checkpoint, not from epoch 0.
    resumed = [t for t in restarted if t["curves"].get("val_acc")]
    assert resumed, "no restarted member trained"
    assert all(t["curves"]["val_acc"][0][0] > 0 for t in resumed)


def check_mlflow_runs(tmp_path: Path, trials: list[dict[str, Any]], metric: str, steps: int) -> None:
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(experiment_ids=["0"])
    assert len(runs) == len(trials)
    keys = set(trials[0]["config"])
    logged = sorted(sorted((k, v) for k, v in r.data.params.items() if k in keys) for r in runs)
    expected = sorted(sorted((k, str(v)) for k, v in t["config"].items()) for t in trials)
    assert logged == expected  # each MLflow run got its trial's values
    for run in runs:
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(steps))


@pytest.mark.slow
@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if e.standalone_args],
    ids=[e.folder for e in EXAMPLES if e.standalone_args],
)
def test_example_script_runs_standalone(example: Example, tmp_path: Path) -> None:
    require(example.needs)
    script = SWEEPS / example.folder / "train.py"
    env = {k: v for k, v in trial_env(tmp_path).items() if not k.startswith("SWEEPER_")}
    result = subprocess.run(
        [sys.executable, str(script), *example.standalone_args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert ("val_acc=" in last) or ("cv_acc=" in last), result.stdout
