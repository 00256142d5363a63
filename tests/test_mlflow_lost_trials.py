"""A trial lost with its agent (kill -9, a machine gone) ends in MLflow too: its run does not show
as running for ever.

Real parts: an `mlflow server`, a `sweeper server` subprocess on SQLite that keeps the sweep's
MLflow record, and a `sweeper agent` process killed with SIGKILL while its trial runs.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from sweeper.trials import TrialState

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("fastapi")
from mlflow.tracking import MlflowClient  # noqa: E402
from server_helpers import QUIET, agent_argv, serving, without_sweeper_settings  # noqa: E402
from trackers_support import MlflowServer  # noqa: E402

# Logs a value, then waits until its agent is gone (it never ends while one is there to end it).
WAITS_FOR_ITS_AGENT = """\
import os, time
import sweeper

agent = os.getppid()
run = sweeper.init()
run.log({"loss": 1.0})
while os.getppid() == agent:
    time.sleep(0.1)
"""


def until(what: str, check, timeout: float = 60.0):  # noqa: ANN001, ANN201 - a poll
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def test_the_run_of_a_trial_lost_with_its_agent_is_ended(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from sweeper.spec import parse_sweep

    program = tmp_path / "train.py"
    program.write_text(WAITS_FOR_ITS_AGENT)
    experiment = "lost-with-its-agent"
    spec = {
        "method": "grid",
        "program": str(program),
        "metric": {"name": "loss"},
        "parameters": {"x": {"values": [1]}},
        "integrations": {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": experiment}},
    }
    mlflow_client = MlflowClient(mlflow_server.uri)

    def trial_runs() -> list | None:
        found = mlflow_client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = mlflow_client.search_runs([found.experiment_id], "tags.`sweeper.role` = 'trial'")
        return runs or None

    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    with serving(db, tmp_path / "server", extra_args=(*QUIET, "--lease-seconds", "2")) as server:
        sweep_id = server.client().create_sweep(parse_sweep(spec)).id
        folder = tmp_path / "agent"
        folder.mkdir()
        agent = subprocess.Popen(
            agent_argv(server.url, sweep_id),
            cwd=folder,
            env=without_sweeper_settings(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            [run] = until("the trial's run", trial_runs)
            until("the trial's first value", lambda: server.client().trials(sweep_id)[0].summary or None)
        finally:
            agent.send_signal(signal.SIGKILL)
            agent.wait(30)
        [lost] = until(
            "the trial to be lost",
            lambda: [t for t in server.client().trials(sweep_id) if t.state is TrialState.LOST] or None,
        )
        ended = until(
            "its run to end",
            lambda: (r := mlflow_client.get_run(run.info.run_id)).info.status != "RUNNING" and r or None,
        )
    assert ended.info.status == "KILLED"
    assert ended.data.tags["sweeper.state"] == "lost"
    assert ended.data.tags["sweeper.stop_reason"] == lost.stop_reason
    assert "lease expired" in lost.stop_reason
