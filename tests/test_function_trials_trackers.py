"""``sweeper.agent(sweep_id, function=train)`` with a ``train`` written for ``wandb.agent``, or one
that logs to MLflow itself: it runs unchanged. Each case runs in a process of its own (the capture
patches wandb and mlflow for the whole process), against W&B offline, read back, and a real
``mlflow server``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("wandb")
from cli_support import SWEEPER  # noqa: E402
from process_support import wait_until  # noqa: E402
from trackers_support import MlflowServer, offline_runs  # noqa: E402

from sweeper._context import run_id_for  # noqa: E402

# Runs a sweep with sweeper.agent(function=train) and prints its trials as JSON on the last line.
DRIVER = """
import json, os, sys
import sweeper
from sweeper.coordinator import Coordinator
from sweeper.store import open_store

{train}

db = os.environ["DB"]
sweep_id = sweeper.sweep(json.loads(os.environ["SWEEP"]), db=db)
if os.environ.get("SWEEP_ID_FILE"):
    with open(os.environ["SWEEP_ID_FILE"], "w") as fh:
        fh.write(sweep_id)
ours = lambda name: name.startswith(("WANDB_", "MLFLOW_", "SWEEPER_")) and name != "WANDB_SERVICE"  # wandb's
before = {{k: v for k, v in os.environ.items() if ours(k)}}
if int(os.environ.get("AGENTS", "1")) == 1:
    reason = sweeper.agent(sweep_id, function=train, db=db)
else:  # several function trials at once in this process
    from sweeper.local import LocalAgents

    count = int(os.environ["AGENTS"])
    agents = LocalAgents(Coordinator(open_store(db)), sweep_id, agents=count, function=train)
    agents.start()
    reason = agents.wait()[0]
after = {{k: v for k, v in os.environ.items() if ours(k)}}
trials = Coordinator(open_store(db)).trials(sweep_id, with_history=True)
changed = sorted(k for k in {{**before, **after}} if before.get(k) != after.get(k))
print(json.dumps({{"sweep_id": sweep_id, "reason": reason, "environment_changed": changed, "trials": [
    {{"number": t.number, "state": t.state.value, "config": dict(t.config), "summary": dict(t.summary),
      "stop_reason": t.stop_reason, "stderr": t.stderr_tail, "curve": t.curve("loss")}} for t in trials]}}))
"""

WANDB_TRAIN = """
import wandb

def train():
    # As written for wandb.agent(sweep_id, function=train): no finish at the end.
    wandb.init()
    for epoch in range(3):
        wandb.log({"loss": wandb.config.lr * (3 - epoch)})
"""

# Logs until the sweep is cancelled from outside; the stop reaches it from wandb.log.
WANDB_UNTIL_STOPPED = """
import pathlib, time
import wandb

def train():
    run = wandb.init()
    step = 0
    while True:
        wandb.log({"loss": 1.0 / (step + 1)})
        step += 1
        if step == 3:
            pathlib.Path(os.environ["STARTED"]).write_text(run.id)
        time.sleep(0.05)
"""

MLFLOW_TRAIN = """
import mlflow

def train():
    # Logs into the trial's run (MLFLOW_RUN_ID) and leaves it active, as a script that exits would:
    # the next trial's start_run() must still work.
    mlflow.start_run()
    lr = sweeper.init().config.lr
    # The run holds the sweep's lr already: spelled otherwise, MLflow would refuse it.
    mlflow.log_params({"lr": f"{lr:.2f}", "batch": 32})
    mlflow.log_param("lr", f"{lr:.3f}", synchronous=False).wait()
    for epoch in range(3):
        mlflow.log_metric("loss", lr * (3 - epoch), step=epoch)
"""


def _run_driver(
    folder: Path, train: str, sweep: dict[str, Any], **env: str
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    script = folder / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(train=textwrap.dedent(train))))
    environ = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(folder),
        "DB": f"sqlite:///{folder / 'sweeps.db'}",
        "SWEEP": json.dumps(sweep),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=folder,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, environ


def _result(proc: subprocess.Popen[str], timeout: float = 240) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    return json.loads(out.strip().splitlines()[-1])


GRID = {
    "method": "grid",
    "metric": {"name": "loss", "goal": "minimize"},
    "parameters": {"lr": {"values": [0.1, 0.2, 0.3]}},
}


def test_a_function_written_for_wandb_agent_runs_unchanged(tmp_path: Path) -> None:
    proc, _ = _run_driver(tmp_path, WANDB_TRAIN, GRID)
    result = _result(proc)
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 3
    assert result["environment_changed"] == []  # the trials' variables were the process's only while they ran
    for trial in trials:  # wandb.log reached the coordinator: the curve and the trial's value
        lr = trial["config"]["lr"]
        assert trial["curve"] == [
            [0, pytest.approx(3 * lr)],
            [1, pytest.approx(2 * lr)],
            [2, pytest.approx(lr)],
        ]
        assert trial["summary"]["loss"] == pytest.approx(lr)

    # One W&B run per trial, under the trial's id and sweep, with the trial's config (wandb.config),
    # its history, and finished when the function returned.
    runs = {run["run_id"]: run for run in offline_runs(tmp_path)}
    assert set(runs) == {run_id_for(result["sweep_id"], t["number"]) for t in trials}
    for trial in trials:
        run = runs[run_id_for(result["sweep_id"], trial["number"])]
        lr = trial["config"]["lr"]
        assert run["config"]["lr"] == lr
        # Grouped by the sweep, which W&B does not know of: the run names none.
        assert (run["run"].get("sweep_id"), run["run"].get("run_group")) == (None, result["sweep_id"])
        assert [row["loss"] for row in run["history"]] == pytest.approx([3 * lr, 2 * lr, lr])
        assert run["state"] == "finished" and run["exit_code"] == 0


def test_a_stop_reaches_a_wandb_function_from_wandb_log(tmp_path: Path) -> None:
    """The sweep is cancelled from another process while the function logs only with wandb.log."""
    started = tmp_path / "started"
    sweep_id_file = tmp_path / "sweep-id"
    sweep = {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}
    proc, environ = _run_driver(
        tmp_path, WANDB_UNTIL_STOPPED, sweep, STARTED=str(started), SWEEP_ID_FILE=str(sweep_id_file)
    )
    try:
        assert wait_until(started.exists, timeout=120), "the function never logged 3 times"
        cancel = subprocess.run(
            [SWEEPER, "cancel", sweep_id_file.read_text(), "--db", environ["DB"]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cancel.returncode == 0, cancel.stderr
        result = _result(proc, timeout=60)
    finally:
        if proc.poll() is None:  # a function the stop never reached runs on: end it with the test
            proc.kill()
            proc.wait()
    (trial,) = result["trials"]
    assert trial["state"] == "stopped", trial
    assert len(trial["curve"]) >= 3
    (run,) = offline_runs(tmp_path)
    assert run["run_id"] == started.read_text()
    assert run["exit_code"] == 143  # ended when the function did, as a stopped trial's command would


def test_a_function_that_logs_to_mlflow_itself(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    sweep = {**GRID, "integrations": {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "fn"}}}
    proc, _ = _run_driver(tmp_path, MLFLOW_TRAIN, sweep)
    result = _result(proc)
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 3, [t["stderr"] for t in trials]
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("fn")
    children = {
        int(run.data.tags["sweeper.trial_number"]): run
        for run in client.search_runs([experiment.experiment_id], max_results=100)
        if run.data.tags.get("sweeper.role") == "trial"
    }
    assert sorted(children) == [1, 2, 3]
    for trial in trials:
        lr = trial["config"]["lr"]
        # mlflow.log_metric reached the coordinator, and went into the trial's own child run
        assert trial["curve"] == [
            [0, pytest.approx(3 * lr)],
            [1, pytest.approx(2 * lr)],
            [2, pytest.approx(lr)],
        ]
        child = children[trial["number"]]
        logged = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss"))
        assert logged == [(0, pytest.approx(3 * lr)), (1, pytest.approx(2 * lr)), (2, pytest.approx(lr))]
        assert child.info.status == "FINISHED"
        assert (child.data.params["lr"], child.data.params["batch"]) == (str(lr), "32")


WANDB_FAILS = """
import wandb

def train():
    wandb.init()
    wandb.log({"loss": wandb.config.lr})
    raise ValueError("diverged")
"""


def test_a_failing_wandb_function_ends_its_run_as_failed(tmp_path: Path) -> None:
    sweep = {**GRID, "parameters": {"lr": {"values": [0.1]}}}
    proc, _ = _run_driver(tmp_path, WANDB_FAILS, sweep)
    trials = _result(proc)["trials"]  # the configuration failed, and failed again when retried
    assert [t["state"] for t in trials] == ["failed", "failed"]
    assert all("ValueError: diverged" in t["stderr"] for t in trials)
    assert [run["exit_code"] for run in offline_runs(tmp_path)] == [1, 1]


def test_wandb_functions_side_by_side_in_one_process_are_refused_not_mixed_up(tmp_path: Path) -> None:
    """Two function trials at once share the process's environment: the second one's wandb.init()
    must fail with a message, not log into the first one's run with its config."""
    slow = WANDB_TRAIN.replace("wandb.init()", "wandb.init(); import time; time.sleep(2)")
    proc, _ = _run_driver(tmp_path, slow, {**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}}}, AGENTS="2")
    result = _result(proc)
    runs = {run["run_id"]: run for run in offline_runs(tmp_path)}
    refused = [t for t in result["trials"] if t["state"] == "failed"]
    assert refused and all("one at a time" in t["stderr"] for t in refused), result["trials"]
    for trial in result["trials"]:
        if trial["state"] == "finished":  # its own run, with its own config
            run = runs[run_id_for(result["sweep_id"], trial["number"])]
            assert run["config"]["lr"] == trial["config"]["lr"]
            assert trial["summary"]["loss"] == pytest.approx(trial["config"]["lr"])


# As written for wandb.agent, with a project and a config of its own, which the sweep overrides.
WANDB_TRAIN_OWN_SETTINGS = """
import wandb

def train():
    wandb.init(project="elsewhere", config={"lr": 9.0, "batch": 32})
    assert wandb.run is not None and wandb.config.batch == 32
    for epoch in range(3):
        wandb.log({"loss": wandb.config.lr * (3 - epoch)})
"""


def test_a_wandb_function_runs_beside_sweepers_own_wandb_tracking(tmp_path: Path) -> None:
    """sweeper's W&B tracking keeps the sweep's run open in the agent's process, so wandb cannot
    be set up afresh for the trial: the trial's run is opened beside it, with what wandb.agent
    would have given it (its id, the sweep's parameters over the function's config, the project)."""
    sweep = {**GRID, "integrations": {"wandb": {"mode": "offline", "project": "digits"}}}
    proc, _ = _run_driver(tmp_path, WANDB_TRAIN_OWN_SETTINGS, sweep)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 3, trials
    assert "environment variables will be ignored" not in err  # wandb would say so, wrongly
    assert "Ignoring project" not in err
    runs = {run["run_id"]: run for run in offline_runs(tmp_path)}
    sweep_id = result["sweep_id"]
    assert set(runs) == {f"{sweep_id}-sweep", *(run_id_for(sweep_id, t["number"]) for t in trials)}
    for trial in trials:
        lr = trial["config"]["lr"]
        assert trial["summary"]["loss"] == pytest.approx(lr)  # wandb.log reached the coordinator
        run = runs[run_id_for(sweep_id, trial["number"])]
        assert run["config"]["lr"] == lr and run["config"]["batch"] == 32
        assert run["run"]["project"] == "digits" and "sweep_id" not in run["run"]
        assert run["run"].get("run_group") == sweep_id
        assert run["run"]["run_group"] == sweep_id and "sweeper" in run["run"]["tags"]
        assert [row["loss"] for row in run["history"]] == pytest.approx([3 * lr, 2 * lr, lr])
        assert run["state"] == "finished" and run["exit_code"] == 0
    sweep_run = runs[f"{sweep_id}-sweep"]
    assert sweep_run["config"].get("lr") is None  # no trial logged into the sweep's run
    assert sweep_run["summary"]["best_loss"] == pytest.approx(0.1)  # what sweeper's tracking logs there
