"""The MLflow adapter against a real `mlflow server`, read back through MlflowClient."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sweeper.store import open_store
from sweeper.trials import TrialState

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from sweeper.integrations.base import SweepInfo, TrialEnd, TrialInfo  # noqa: E402
from sweeper.integrations.mlflow import MlflowTracker  # noqa: E402
from sweeper.integrations.safe import SafeTracker  # noqa: E402
from sweeper.integrations.settings import mlflow_settings  # noqa: E402
from trackers_support import (  # noqa: E402
    TRIAL_SCRIPT,
    MlflowServer,
    SlowUplink,
    captured_curve,
    free_port,
    run_sweep,
    sweeper_cli,
    trial_script_sweep,
)

from sweeper.trials import MetricPoint  # noqa: E402

SCRIPTS = Path(__file__).parent / "scripts"
SWEEPER = str(Path(sys.executable).with_name("sweeper"))


def runs_of(client: MlflowClient, experiment: str) -> tuple[object, list]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweeper.role") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r.data.tags.get("sweeper.role") != "sweep"]
    return parents[0], children


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_sweep_with_finished_failed_and_stopped_trials(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    program = tmp_path / "train.py"
    program.write_text(TRIAL_SCRIPT)
    sweep = {
        "method": "grid",
        "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {
            "mode": {"values": ["ok", "fail", "hang"]},
            "model": {"parameters": {"lr": {"value": 0.5}}},
        },
        "sweeper": {"max_retries": 0},
        "integrations": {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "three-ends"}},
    }
    # The script reads cfg.lr at the top level; the nested one checks parameter flattening.
    coordinator, sweep_id, trials = run_sweep(tmp_path, sweep, program)
    by_mode = {t.config["mode"]: t for t in trials}
    assert {m: t.state for m, t in by_mode.items()} == {
        "ok": TrialState.FINISHED,
        "fail": TrialState.FAILED,
        "hang": TrialState.STOPPED,
    }

    client = MlflowClient(mlflow_server.uri)
    parent, children = runs_of(client, "three-ends")
    assert parent.data.tags["sweeper.sweep_id"] == sweep_id
    assert parent.data.params["method"] == "grid" and parent.data.tags["sweeper.method"] == "grid"
    assert parent.info.status == "FINISHED"
    assert {"sweep.yaml", "leaderboard.csv", "leaderboard.json", "best_so_far.png"} <= artifacts(
        client, parent.info.run_id
    )
    best = client.get_metric_history(parent.info.run_id, "best_loss")
    assert sorted((m.step, m.value) for m in best)[-1][1] == pytest.approx(0.1 / 3)
    board = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "leaderboard.json", str(tmp_path))).read_text()
    )
    assert {row["trial"] for row in board["trials"]} == {t.number for t in trials}

    assert len(children) == 3
    status = {"ok": "FINISHED", "fail": "FAILED", "hang": "KILLED"}
    for child in children:
        trial = next(t for t in trials if str(t.number) == child.data.tags["sweeper.trial_number"])
        mode = trial.config["mode"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["sweeper.sweep_id"] == sweep_id
        assert child.data.tags["sweeper.trial_id"] == str(trial.id)
        assert child.data.tags["sweeper.state"] == trial.state.value
        assert child.data.tags["sweeper.host"]
        assert child.info.status == status[mode]
        assert child.data.params == {"mode": mode, "model.lr": "0.5"}
        history = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss"))
        assert history == trial.curve("loss") == [(s, 0.1 / (s + 1)) for s in range(3)]
        assert artifacts(client, child.info.run_id, "logs") == {"logs/stdout.log", "logs/stderr.log"}
        assert artifacts(client, child.info.run_id, "artifacts") == {"artifacts/model.txt"}
        stdout = client.download_artifacts(child.info.run_id, "logs/stdout.log", str(tmp_path / mode))
        assert f"stdout of trial {mode}" in Path(stdout).read_text()
    failed = next(c for c in children if c.info.status == "FAILED")
    assert failed.data.tags["sweeper.exit_code"] == "3"
    stopped = next(c for c in children if c.info.status == "KILLED")
    assert stopped.data.tags["sweeper.stop_reason"] == "test: stopped on purpose"


def sweeper_run(sweep_file: Path, *args: str, cwd: Path, env: dict[str, str]) -> None:
    """`sweeper run SWEEP_FILE ARGS` as a user runs it; it must end with exit status 0."""
    command = [SWEEPER, "run", str(sweep_file), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unchanged_mlflow_scripts_started_together_share_a_fresh_local_database(tmp_path: Path) -> None:
    """No tracking URI: MLflow keeps runs in ./mlflow.db, and the first process to open it creates
    its tables. Four trials starting at once used to race at that, and most of them failed."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"program: {SCRIPTS / 'mlflow_script.py'}\n"
        "method: grid\n"
        "metric: {name: loss, goal: minimize}\n"
        "parameters:\n  lr: {values: [0.1, 0.2, 0.4, 0.8]}\n  epochs: {value: 2}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    sweeper_run(sweep_file, "--agents", "4", cwd=tmp_path, env=env)
    store = open_store(f"sqlite:///{tmp_path / '.sweeper' / 'sweeper.db'}")
    (sweep,) = store.list_sweeps()
    trials = store.list_trials(sweep.id)
    assert [t.state for t in trials] == [TrialState.FINISHED] * 4, [(t.state, t.stderr_tail) for t in trials]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # Each script's last loss is lr * 1: one run per trial, all in the one database.
    assert sorted(round(r.data.metrics["loss"], 6) for r in runs) == [0.1, 0.2, 0.4, 0.8]


def test_agents_started_together_on_a_fresh_sqlite_tracking_store_all_log(tmp_path: Path) -> None:
    """Each agent's own MLflow client creates the store's tables the first time it opens it; two
    agents doing that at once made one of them give up logging for good."""
    ml_db = tmp_path / "ml.db"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"program: {SCRIPTS / 'e2e_trial.py'}\n"
        "method: grid\n"
        "metric: {name: score, goal: maximize}\n"
        "parameters:\n  x: {values: [1, 2, 3, 4]}\n"
        f"integrations: {{mlflow: {{tracking_uri: 'sqlite:///{ml_db}', experiment: together}}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    made = subprocess.run(
        [SWEEPER, "sweep", str(sweep_file), "--db", db], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    sweep_id = made.stdout.split()[0]
    agents = [
        subprocess.Popen(
            [SWEEPER, "agent", sweep_id, "--db", db],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [agent.communicate(timeout=180)[0] for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), outputs
    assert not any("logging is off" in out for out in outputs), outputs
    client = MlflowClient(f"sqlite:///{ml_db}")
    parent, children = runs_of(client, "together")
    assert sorted(r.data.params["x"] for r in children) == ["1", "2", "3", "4"]


def test_a_bare_mlflow_flag_keeps_the_sweep_in_one_database_wherever_agents_start(tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"program: {SCRIPTS / 'e2e_trial.py'}\n"
        "method: grid\n"
        "metric: {name: score, goal: maximize}\n"
        "parameters:\n  x: {values: [1, 2, 3]}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    sweeper_run(sweep_file, "--mlflow", "--count", "1", cwd=tmp_path, env=env)
    db = f"sqlite:///{tmp_path / '.sweeper' / 'sweeper.db'}"
    (sweep,) = open_store(db).list_sweeps()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    agent = subprocess.run(
        [SWEEPER, "agent", sweep.id, "--db", db], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert agent.returncode == 0, agent.stdout + agent.stderr
    assert not (elsewhere / "mlflow.db").exists()
    _, children = runs_of(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "sweeper")
    assert sorted(r.data.params["x"] for r in children) == ["1", "2", "3"]


def test_trials_get_mlflows_own_http_settings_not_the_agents(tmp_path: Path) -> None:
    """The agent's own MLflow calls fail fast (SafeTracker retries them); a trial's script keeps
    MLflow's retries and timeout, however many trackers the process has built."""
    from mlflow import environment_variables as ev

    names = (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
    )
    script = tmp_path / "http.py"
    script.write_text(
        f"import json, os\njson.dump({{k: os.environ.get(k) for k in {names!r}}}, open('http.json', 'w'))\n"
    )
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(f"program: {script}\nmethod: grid\nparameters:\n  x: {{values: [1]}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    sweeper_run(sweep_file, "--mlflow", cwd=tmp_path, env=env)
    seen = json.loads((tmp_path / "http.json").read_text())
    own = {name: str(getattr(ev, name).default) for name in names}
    assert seen == own
    # Started by a process that runs an agent (sweeper.agent() in a notebook, a test), which set the
    # agent's settings in its environment: the trials still get the settings from before that.
    (tmp_path / "http.json").unlink()
    inherited = {
        **env,
        **dict(zip(names, ("0", "10", "true"), strict=True)),
        "SWEEPER_MLFLOW_TRIAL_HTTP": json.dumps(own),
    }
    sweeper_run(sweep_file, "--mlflow", cwd=tmp_path, env=inherited)
    assert json.loads((tmp_path / "http.json").read_text()) == own


def test_a_trial_whose_run_could_not_be_made_still_logs_to_the_sweeps_server() -> None:
    """MLflow down as a trial starts: its script's own logging goes to the sweep's server and
    experiment, with the trials' HTTP settings; before, it had no tracking URI (MLflow then wrote
    a ./mlflow.db of its own) and the agent's fail-fast settings."""
    from sweeper.integrations import mlflow as adapter

    port = free_port()  # nobody listens there
    tracker = MlflowTracker.from_block({"tracking_uri": f"http://127.0.0.1:{port}", "experiment": "mine"})
    safe = SafeTracker(tracker, start_timeout=10)
    try:
        env = safe.trial_started(TrialInfo(sweep_id="sw", trial_id=1, trial_number=1, config={"x": 1}))
    finally:
        safe.close(timeout=0.5)
    assert "MLFLOW_RUN_ID" not in env
    assert (
        env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{port}" and env["MLFLOW_EXPERIMENT_NAME"] == "mine"
    )
    trials_get = adapter._trial_settings or {}
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" in trials_get
    assert {name: env[name] for name in trials_get} == trials_get  # not the agent's own


def test_a_bare_mlflow_flag_stores_no_uri_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    """A tracking URI from the environment may hold a password, and agents elsewhere read their own."""
    from sweeper.integrations.cli import FROM_ENV, with_trackers
    from sweeper.integrations.settings import absolute_uri

    raw = {"method": "grid", "parameters": {"x": {"values": [1]}}}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@mlflow:5000")
    assert with_trackers(raw, FROM_ENV, False)["integrations"] == {"mlflow": {}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    stored = with_trackers(raw, FROM_ENV, False)["integrations"]["mlflow"]
    assert stored == {"tracking_uri": f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"}
    # Named stores are not folders.
    assert [absolute_uri(u) for u in ("databricks", "databricks://team", "uc:x")] == [
        "databricks",
        "databricks://team",
        "uc:x",
    ]


PARAMS_SCRIPT = """
import argparse, mlflow
p = argparse.ArgumentParser()
p.add_argument("--C", type=float)
p.add_argument("--mode")
args = p.parse_args()
with mlflow.start_run():
    # The sweep's C is 1 (logged as "1"); argparse makes it 1.0. mode is logged changed.
    mlflow.log_params({"C": args.C, "mode": args.mode + "-changed", "extra": 1})
    mlflow.log_param("C", args.C)
    mlflow.log_metric("loss", args.C)
"""


def test_a_script_logging_the_sweeps_params_itself_is_not_refused(tmp_path: Path) -> None:
    """MLflow refuses a param logged again with another spelling ("1" then "1.0"): the script's
    call would fail, and the trial with it, in a run that sweeper filled before it started."""
    program = tmp_path / "train.py"
    program.write_text(PARAMS_SCRIPT)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"program: {program}\nmethod: grid\nmetric: {{name: loss, goal: minimize}}\n"
        "parameters:\n  C: {values: [1]}\n  mode: {value: fast}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    sweeper_run(sweep_file, "--mlflow", uri, "--db", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path, env=env)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    (trial,) = store.list_trials(store.list_sweeps()[0].id)
    assert trial.state is TrialState.FINISHED and trial.metric("loss") == 1.0
    _, (child,) = runs_of(MlflowClient(uri), "sweeper")
    assert {k: child.data.params[k] for k in ("C", "mode", "extra")} == {
        "C": "1",
        "mode": "fast",
        "extra": "1",
    }
    stderr = next((tmp_path / ".sweeper" / "trials").rglob("stderr.log")).read_text()
    assert (
        "sweeper: mlflow param 'mode' = 'fast-changed' not logged: the run already holds the sweep's "
        "value 'fast'" in stderr
    )
    assert "'C'" not in stderr  # the same value, spelled otherwise: left out without a word


def run_script_sweep(tmp_path: Path, script: Path, *, sweep_extra: str = "", **env: str) -> str:
    """`sweeper run --mlflow` of a grid over x in [1] running ``script``, logging to a fresh local
    MLflow store in ``tmp_path``, from a shell with no MLFLOW_ or SWEEPER_ variables but ``env``;
    returns the store's URI."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"program: {script}\nmethod: grid\nparameters:\n  x: {{values: [1]}}\n{sweep_extra}"
    )
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    db = f"sqlite:///{tmp_path / 's.db'}"
    sweeper_run(sweep_file, "--mlflow", uri, "--db", db, cwd=tmp_path, env={**shell, **env})
    return uri


def test_a_script_that_sets_its_own_experiment_runs_and_logs(tmp_path: Path) -> None:
    """``mlflow.set_experiment("mine")`` then ``start_run()``: MLflow refuses to start the trial's run,
    which is in the sweep's experiment, and every trial failed. Now the script's run is made in its
    experiment, and the trial's run gets the same metrics from sweeper."""
    script = tmp_path / "own.py"
    script.write_text(
        "import mlflow\nmlflow.set_experiment('mine')\n"
        "with mlflow.start_run():\n    for step in range(3):\n"
        "        mlflow.log_metric('loss', 1.0 / (step + 1), step=step)\n"
    )
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(f"program: {script}\nmethod: grid\nparameters:\n  x: {{values: [1, 2]}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    sweeper_run(sweep_file, "--mlflow", uri, "--db", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path, env=env)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    trials = store.list_trials(store.list_sweeps()[0].id)
    assert [(t.state, t.metric("loss")) for t in trials] == [(TrialState.FINISHED, 1 / 3)] * 2
    client = MlflowClient(uri)
    _, children = runs_of(client, "sweeper")
    mine = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    assert len(children) == len(mine) == 2
    for run in [*children, *mine]:  # the metrics once in each
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
            (0, 1.0),
            (1, 0.5),
            (2, 1 / 3),
        ]
    stderr = next((tmp_path / ".sweeper" / "trials").rglob("stderr.log")).read_text()
    assert (
        "sweeper: the script set MLflow experiment" in stderr and "outside the sweep's experiment" in stderr
    )


def test_an_experiment_named_in_the_shell_gives_way_to_the_sweeps(tmp_path: Path) -> None:
    """MLFLOW_EXPERIMENT_NAME exported in the shell, another experiment in the sweep file: the trial's
    run is in the sweep's, and so are the script's nested and next runs. MLflow refused each of
    them (an experiment id that does not match the name), so every trial failed."""
    script = tmp_path / "nested.py"
    script.write_text(
        "import mlflow\n"
        "with mlflow.start_run():\n"
        "    mlflow.log_metric('loss', 0.5)\n"
        "    with mlflow.start_run(nested=True, run_name='fold'):\n"
        "        mlflow.log_metric('fold_loss', 0.25)\n"
        "with mlflow.start_run(run_name='after'):\n"
        "    mlflow.log_metric('test_loss', 0.75)\n"
    )
    MlflowClient(f"sqlite:///{tmp_path / 'ml.db'}").create_experiment("shell")
    extra = "metric: {name: loss, goal: minimize}\nintegrations:\n  mlflow: {experiment: team}\n"
    uri = run_script_sweep(tmp_path, script, sweep_extra=extra, MLFLOW_EXPERIMENT_NAME="shell")
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    (trial,) = store.list_trials(store.list_sweeps()[0].id)
    assert (trial.state, trial.metric("loss")) == (TrialState.FINISHED, 0.5), trial.stderr_tail
    client = MlflowClient(uri)
    parent, runs = runs_of(client, "team")
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {f"{trial.sweep_id}-1", "fold", "after"}
    assert by_name["fold"].data.tags["mlflow.parentRunId"] == by_name[f"{trial.sweep_id}-1"].info.run_id
    assert client.search_runs([client.get_experiment_by_name("shell").experiment_id]) == []


def test_what_a_script_logs_into_runs_of_its_own_reaches_the_trials_run(tmp_path: Path) -> None:
    """A script that ends the trial's run and starts another, or logs through MlflowClient into a
    run it made: those metrics were missing from the trial's run (taken to be in it already).
    A run it nests in the trial's run keeps its own, as MLflow shows it under the trial's."""
    script = tmp_path / "runs.py"
    script.write_text(
        "import mlflow\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_metric('loss', 1.0, step=0)\n"
        "    with mlflow.start_run(nested=True, run_name='fold'):\n"
        "        mlflow.log_metric('fold_loss', 0.25)\n"
        "    kid = mlflow.MlflowClient().create_run(\n"
        "        run.info.experiment_id, tags={'mlflow.parentRunId': run.info.run_id}, run_name='kid'\n"
        "    )\n"
        "    mlflow.MlflowClient().log_metric(kid.info.run_id, 'kid_loss', 0.125)\n"
        "with mlflow.start_run(run_name='second'):\n"
        "    mlflow.log_metric('loss', 0.5, step=1)\n"
        "client = mlflow.MlflowClient()\n"
        "made = client.create_run(mlflow.get_experiment_by_name('sweeper').experiment_id, run_name='made')\n"
        "client.log_metric(made.info.run_id, 'acc', 0.75, step=2)\n"
        "client.set_terminated(made.info.run_id)\n"
    )
    client = MlflowClient(run_script_sweep(tmp_path, script))
    _, runs = runs_of(client, "sweeper")
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) >= {"fold", "kid", "second", "made"}, set(by_name)
    (trial_run,) = [run for run in runs if run.data.tags.get("sweeper.role") == "trial"]

    def history(run_id: str, name: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))

    assert history(trial_run.info.run_id, "loss") == [(0, 1.0), (1, 0.5)]  # each once
    assert history(trial_run.info.run_id, "acc") == [(2, 0.75)]
    # In the runs nested in the trial's, which MLflow shows under it: not copied into it.
    assert history(trial_run.info.run_id, "fold_loss") == history(trial_run.info.run_id, "kid_loss") == []
    assert history(by_name["fold"].info.run_id, "fold_loss") == [(0, 0.25)]
    assert history(by_name["kid"].info.run_id, "kid_loss") == [(0, 0.125)]


def test_unchanged_mlflow_script_under_sweeper_run(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """`sweeper run --mlflow URI` on a script that only knows mlflow: its metrics reach the coordinator
    step by step while it runs, and land once, in the trial's pre-created child run."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        f"program: {SCRIPTS / 'mlflow_script.py'}\n"
        "method: grid\n"
        "metric: {name: loss, goal: minimize}\n"
        "early_terminate: {type: hyperband, min_iter: 1, eta: 2}\n"
        "parameters:\n  lr: {values: [0.1, 0.2, 0.4, 0.8]}\n  epochs: {value: 6}\n  pause: {value: 0.2}\n"
    )
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    env = {**os.environ, "MLFLOW_EXPERIMENT_NAME": "unchanged-script"}
    sweeper_run(sweep_file, "--agents", "2", "--db", db, "--mlflow", mlflow_server.uri, cwd=tmp_path, env=env)

    store = open_store(db)
    (sweep,) = store.list_sweeps()
    trials = store.list_trials(sweep.id, with_history=True)
    assert len(trials) == 4
    client = MlflowClient(mlflow_server.uri)
    parent, children = runs_of(client, "unchanged-script")
    assert len(children) == 4
    for trial in trials:
        curve = captured_curve(trial)
        child = next(c for c in children if c.data.tags["sweeper.trial_number"] == str(trial.number))
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["script"] == "mlflow_script"  # the script logged into the pre-created run
        logged = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss"))
        assert logged[: len(curve)] == curve and len(logged) == len(set(logged))  # once, not twice
        assert child.info.status == ("FINISHED" if trial.state is TrialState.FINISHED else "KILLED")
    stops = [t for t in trials if t.state is TrialState.STOPPED]
    print(f"hyperband stopped {len(stops)} of {len(trials)} trial(s):", [t.stop_reason for t in stops])


def gated_script(folder: Path, gate: Path, *, waits_when: str) -> Path:
    """A trial that logs loss 1.0, then, while ``waits_when`` holds, waits for ``gate``, then logs 0.5."""
    program = folder / "waits.py"
    program.write_text(
        "import pathlib, time, sweeper\n"
        "run = sweeper.init({'lr': 0.1})\n"
        "run.log({'loss': 1.0}, step=0)\n"
        f"while {waits_when} and not pathlib.Path({str(gate)!r}).exists():\n"
        "    time.sleep(0.05)\n"
        "run.log({'loss': 0.5}, step=1)\n"
    )
    return program


def gated_sweep(program: Path, server: MlflowServer, experiment: str, values: list[float], db: str) -> str:
    import sweeper

    return sweeper.sweep(
        {
            "method": "grid",
            "program": str(program),
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"lr": {"values": values}},
            "integrations": {"mlflow": {"tracking_uri": server.uri, "experiment": experiment}},
        },
        db=db,
    )


def wait_for_first_log(trial_dir: Path, agent: threading.Thread) -> None:
    """Until the trial in ``trial_dir`` has logged, while the ``agent`` thread still runs."""
    deadline = time.monotonic() + 120
    while not (trial_dir / "metrics.jsonl").exists() or not (trial_dir / "metrics.jsonl").read_text():
        assert agent.is_alive() and time.monotonic() < deadline, f"the trial in {trial_dir} never logged"
        time.sleep(0.05)


def test_a_sweep_that_ends_leaves_another_sweep_in_the_process_logging(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``sweeper.agent()`` calls in one process: the first sweep ends while a trial of the
    second is running. Its trackers close; the second sweep's keep every record."""

    import sweeper

    monkeypatch.chdir(tmp_path)  # the agents' working folder

    gate = tmp_path / "first-sweep-done"
    program = gated_script(tmp_path, gate, waits_when="True")
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    first = gated_sweep(program, mlflow_server, "first", [0.1], db)
    second = gated_sweep(program, mlflow_server, "second", [0.2], db)
    gate.touch()
    sweeper.agent(first, db=db)  # one quick trial: its sweep ends and its trackers close
    gate.unlink()
    later = threading.Thread(target=sweeper.agent, args=(second,), kwargs={"db": db})
    later.start()
    wait_for_first_log(tmp_path / ".sweeper" / "trials" / second / "1", later)  # it runs, and waits
    sweeper.agent(first, db=db)  # the first sweep again: done at once, and its trackers close again
    gate.touch()
    later.join(120)
    client = MlflowClient(mlflow_server.uri)
    _, (child,) = runs_of(client, "second")
    assert child.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(child.info.run_id, "loss")] == [1.0, 0.5]


def test_an_agent_that_ends_leaves_another_agent_of_the_same_sweep_logging(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``sweeper.agent()`` calls on one sweep in one process: the second ends while the
    first one's trial is running. The trackers stay open until the first is done too."""

    import sweeper

    monkeypatch.chdir(tmp_path)  # the agents' working folder

    gate = tmp_path / "quick-trial-done"
    program = gated_script(tmp_path, gate, waits_when="run.config['lr'] == 0.1")
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    sweep = gated_sweep(program, mlflow_server, "shared", [0.1, 0.2], db)
    waiting = threading.Thread(target=sweeper.agent, args=(sweep,), kwargs={"count": 1, "db": db})
    waiting.start()  # trial 1 (lr 0.1) logs once, then waits for the gate
    wait_for_first_log(tmp_path / ".sweeper" / "trials" / sweep / "1", waiting)
    sweeper.agent(sweep, count=1, db=db)  # trial 2 (lr 0.2) runs through, and this agent ends
    gate.touch()
    waiting.join(120)
    client = MlflowClient(mlflow_server.uri)
    _, children = runs_of(client, "shared")
    waited = next(run for run in children if run.data.params.get("lr") == "0.1")
    assert waited.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(waited.info.run_id, "loss")] == [1.0, 0.5]


def test_tracker_flags_on_a_broken_file_list_every_problem_of_the_file(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from sweeper.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text(
        "method: grid\nprogram: t.py\nintegrations: [mlflow]\nparameters: {x: {value: 1}}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "method: random\nprogram: t.py\nintegrations: {mlflw: true}\nparameters: {lr: {min: 1.0, max: 0.1}}\n"
    )
    broken = CliRunner().invoke(main, ["run", "a.yaml", "--mlflow", "http://127.0.0.1:9"])
    assert broken.exit_code == 2 and "a.yaml" in broken.output and "integrations" in broken.output, (
        broken.output
    )
    assert isinstance(broken.exception, SystemExit), broken.exception  # a message, not a traceback
    both = CliRunner().invoke(main, ["run", "b.yaml", "--wandb"])
    assert both.exit_code == 2 and "mlflw" in both.output and "parameters.lr" in both.output, both.output
    assert not (tmp_path / ".sweeper").exists()  # nothing was made


def test_sweep_runs_made_at_the_same_moment_become_one(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes make the sweep's run at once (the server and an agent started with the sweep):
    each looked before the other's run was there. The one that sees both keeps the first and sets
    its own aside, ended and out of the sweep's runs, not deleted (a process may log into it)."""
    settings = mlflow_settings({"tracking_uri": mlflow_server.uri, "experiment": "race"})
    first, second = MlflowTracker(settings), MlflowTracker(settings)
    kept = first.parent_run("sw")
    look = second._first_parent
    looks: list[str] = []

    def late(sweep_id: str) -> str | None:
        looks.append(sweep_id)
        return None if len(looks) == 1 else look(sweep_id)  # the first look misses the first's run

    monkeypatch.setattr(second, "_first_parent", late)
    assert second.parent_run("sw") == kept and len(looks) == 2
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("race").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment], "tags.`sweeper.role` = 'sweep'")] == [
        kept
    ]
    (aside,) = client.search_runs([experiment], "tags.`sweeper.role` = 'sweep-duplicate'")
    assert aside.info.status == "KILLED" and aside.data.tags["sweeper.duplicate_of"] == kept


def test_the_sweeps_run_shows_its_best_when_trials_end_out_of_order(mlflow_server: MlflowServer) -> None:
    """Trial 2 ends first (0.5), then trial 1 (0.1), then trial 3 (0.3): the runs table shows a
    run's value at its highest step, which must be the sweep's best, 0.1."""
    from sweeper.integrations.base import Leaderboard, LeaderRow

    tracker = MlflowTracker.from_block({"tracking_uri": mlflow_server.uri, "experiment": "out-of-order"})
    tracker.sweep_started(SweepInfo("ooo", "random", {}, metric_name="loss"))
    rows = [
        LeaderRow(2, "finished", 0.5, {}),
        LeaderRow(1, "finished", 0.1, {}),
        LeaderRow(3, "finished", 0.3, {}),
    ]
    tracker.leaderboard(Leaderboard("ooo", "loss", "minimize", tuple(rows[:2])))
    tracker.leaderboard(Leaderboard("ooo", "loss", "minimize", tuple(rows)))  # logs trial 3 alone
    run_id = tracker.parent_run("ooo")
    tracker.close()
    client = MlflowClient(mlflow_server.uri)
    for name in ("loss", "best_loss"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert history == [(1, 0.5), (2, 0.1), (3, 0.1)], name
    assert client.get_run(run_id).data.metrics == {"loss": 0.1, "best_loss": 0.1}


def test_a_trials_start_does_not_wait_for_the_upload_of_the_trial_before(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    # An agent whose uplink is slow: the last trial's checkpoint takes seconds to reach MLflow.
    # The next trial's run is made meanwhile, so its script starts at once and logs into it.
    uplink = SlowUplink(mlflow_server.port, rate=1_000_000)
    client = MlflowClient(mlflow_server.uri)  # artifacts go through the server, so up the slow link
    client.create_experiment("beside-uploads", artifact_location="mlflow-artifacts:/beside-uploads")
    settings = mlflow_settings({"tracking_uri": uplink.uri, "experiment": "beside-uploads"})
    tracker = SafeTracker(MlflowTracker(settings))
    first, second = (TrialInfo("lanes", n, n, {"lr": 0.1 * n}) for n in (1, 2))
    try:
        first_run = tracker.trial_started(first)["MLFLOW_RUN_ID"]
        checkpoint = tmp_path / "model.bin"
        checkpoint.write_bytes(os.urandom(8_000_000))  # 8 s at 1 MB/s
        tracker.trial_ended(first, TrialEnd(TrialState.FINISHED, artifacts=(checkpoint,)))
        second_run = tracker.trial_started(second)["MLFLOW_RUN_ID"]
        assert client.get_run(first_run).info.status == "RUNNING"  # its checkpoint is still on its way
        tracker.trial_metrics(second, [MetricPoint("loss", 0.5, step=0, seq=0, time=time.time())], "sweeper")
        tracker.trial_ended(second, TrialEnd(TrialState.FINISHED))
        assert tracker.flush(timeout=120)
    finally:
        tracker.close(timeout=5)
        uplink.close()
    assert client.get_run(first_run).info.status == "FINISHED"
    [uploaded] = client.list_artifacts(first_run, "artifacts")
    assert uploaded.file_size == 8_000_000
    ended = client.get_run(second_run)
    assert ended.info.status == "FINISHED" and ended.data.metrics == {"loss": 0.5}
    assert ended.data.tags["mlflow.parentRunId"] == client.get_run(first_run).data.tags["mlflow.parentRunId"]


def parent_run_of(client: MlflowClient, experiment: str) -> tuple[str, str]:
    """The sweep's MLflow run: its status and its ``sweeper.state`` tag."""
    parent, _ = runs_of(client, experiment)
    return parent.info.status, parent.data.tags["sweeper.state"]


def test_the_sweeps_run_is_running_while_the_sweep_is(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """Its status follows the sweep's: RUNNING after --count (more can run), FINISHED at the end,
    KILLED when `sweeper run` stopped it as its agents gave up, RUNNING again once taken up."""
    client = MlflowClient(mlflow_server.uri)
    tracking = {"tracking_uri": mlflow_server.uri, "experiment": "goes-on"}
    parameters = {"lr": {"values": [0.1, 0.2]}, "mode": {"value": "ok"}}
    trial_script_sweep(tmp_path, parameters, integrations={"mlflow": tracking})
    ran = sweeper_cli("run", "sweep.yaml", "--count", "1", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "View run" not in ran.stdout + ran.stderr  # MLflow's links among the progress lines
    sweep_id = ran.stdout.split()[1].rstrip(":")
    assert parent_run_of(client, "goes-on") == ("RUNNING", "running")
    went_on = sweeper_cli("agent", sweep_id, cwd=tmp_path)
    assert went_on.returncode == 0, went_on.stdout + went_on.stderr
    assert parent_run_of(client, "goes-on") == ("FINISHED", "finished")

    parameters["mode"] = {"value": "fail"}
    trial_script_sweep(tmp_path, parameters, integrations={"mlflow": {**tracking, "experiment": "gives-up"}})
    ran = sweeper_cli("run", "sweep.yaml", "--max-failures", "1", cwd=tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    sweep_id = ran.stdout.split()[1].rstrip(":")
    assert parent_run_of(client, "gives-up") == ("KILLED", "stopped")
    assert sweeper_cli("resume", sweep_id, cwd=tmp_path).returncode == 0
    # Taken up again by an agent, which gives up too but leaves the sweep to others.
    again = sweeper_cli("agent", sweep_id, "--max-failures", "1", cwd=tmp_path)
    assert again.returncode == 1, again.stdout + again.stderr
    assert parent_run_of(client, "gives-up") == ("RUNNING", "running")


def test_a_server_that_refuses_the_settings_is_said_before_anything_runs(
    mlflow_server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials refused (401) or no MLflow API at the URI's path (404): said at once, where
    every record would otherwise be retried as if the server were down, then dropped at exit."""
    guarded = MlflowServer(tmp_path / "auth", admin_password="s3cret-Pa55word")
    guarded.start()
    try:
        trial_script_sweep(tmp_path, {"lr": {"values": [0.1]}})
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        refused = sweeper_cli("run", "sweep.yaml", "--mlflow", guarded.uri, cwd=tmp_path, env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"the server at {guarded.uri} answered 401: set MLFLOW_TRACKING_USERNAME" in refused.stderr
        assert not (tmp_path / ".sweeper").exists()  # nothing ran

        wrong_path = sweeper_cli(
            "run", "sweep.yaml", "--mlflow", f"{mlflow_server.uri}/mlflow", cwd=tmp_path, env=env
        )
        assert wrong_path.returncode == 2, wrong_path.stdout + wrong_path.stderr
        assert "answered 404: no MLflow tracking API there" in wrong_path.stderr, wrong_path.stderr

        # An agent on a machine without the credentials, on a sweep made elsewhere: said before it
        # takes a trial, by the command and by the Python agent alike.
        trial_script_sweep(
            tmp_path, {"lr": {"values": [0.1]}}, integrations={"mlflow": {"tracking_uri": guarded.uri}}
        )
        made = sweeper_cli("sweep", "sweep.yaml", cwd=tmp_path, env=env)
        assert made.returncode == 0, made.stdout + made.stderr
        sweep_id = made.stdout.split()[-1]
        agent = sweeper_cli("agent", sweep_id, cwd=tmp_path, env=env)
        assert agent.returncode == 1, agent.stdout + agent.stderr
        assert (
            f"Error: this agent cannot log where sweep {sweep_id} logs, so it takes no trial: mlflow: "
            in agent.stderr
        )
        assert f"the server at {guarded.uri} answered 401: set MLFLOW_TRACKING_USERNAME" in agent.stderr
        python_agent = subprocess.run(
            [sys.executable, "-c", f"import sweeper; sweeper.agent({sweep_id!r})"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert python_agent.returncode == 1
        assert "TrackerRefusedError: this agent cannot log where sweep" in python_agent.stderr, (
            python_agent.stderr
        )
        assert "answered 401" in python_agent.stderr
        listed = sweeper_cli("trials", sweep_id, "--format", "json", cwd=tmp_path, env=env)
        assert json.loads(listed.stdout) == [], listed.stdout  # no trial was taken

        # Refused later on (credentials revoked mid-sweep): said as refused, with what to set, not
        # as the server being down; the records are kept in case someone fixes it.
        refusing = SafeTracker(MlflowTracker.from_block({"tracking_uri": guarded.uri}), base_backoff=0.1)
        with caplog.at_level(logging.ERROR, logger="sweeper.integrations"):
            refusing.sweep_started(SweepInfo(sweep_id, "grid", {}))
            assert not refusing.flush(timeout=2)
            refusing.close(timeout=0.1)
        assert (
            f"MLflow refused a call: the server at {guarded.uri} answered 401: set MLFLOW_TRACKING_USERNAME"
        ) in caplog.text, caplog.text
        assert "unreachable" not in caplog.text
        assert f"gave up on 1 call(s) at exit: the server at {guarded.uri} answered 401" in caplog.text

        # With the credentials, the sweep and its trial log there.
        allowed = {**env, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "s3cret-Pa55word"}
        ran = sweeper_cli("run", "sweep.yaml", "--mlflow", guarded.uri, cwd=tmp_path, env=allowed)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        client = MlflowClient(guarded.uri)
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="s3cret-Pa55word")
        try:
            parent, children = runs_of(client, "sweeper")
        finally:
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(name, None)
        assert parent.info.status == "FINISHED"
        assert [c.data.metrics["loss"] for c in children] == [pytest.approx(0.1 / 3)]
    finally:
        guarded.stop()
