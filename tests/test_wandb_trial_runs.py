"""The W&B run a trial's script opens itself, as W&B's servers will see it: it names no sweep
(W&B's servers refuse a run whose sweep they do not know, when it is made or synced), and it gets
the trial's id, project and config as under ``wandb agent``.

Real parts: local agents running an unchanged W&B script as a command, wandb offline, and what
each run wrote, read back with ``wandb leet inspect``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sweeper.trials import TrialState

pytest.importorskip("wandb")
from trackers_support import offline_runs, run_sweep  # noqa: E402

# Asks for a project, a run id and defaults of its own, as scripts written for W&B do; says what it got.
OWN_SETTINGS = """
import json, os
import wandb

run = wandb.init(project="own-project", id="own-id-1", config={"lr": 0.5, "extra": 1})
wandb.config.update({"lr": 9.0})  # locked by the sweep, as under wandb agent
seen = {"env": os.environ.get("WANDB_SWEEP_ID"), "sweep_id": run.sweep_id, "lr": wandb.config.lr}
print("SEEN " + json.dumps(seen))
wandb.log({"loss": wandb.config.lr})
run.finish()
"""


@pytest.mark.parametrize("sweep_project", ["swept", None])
def test_a_scripts_own_run_names_no_sweep_and_gets_the_trials_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep_project: str | None
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_PROJECT", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)
    program = tmp_path / "train.py"
    program.write_text(OWN_SETTINGS)
    sweep = {"method": "grid", "metric": {"name": "loss"}, "parameters": {"lr": {"values": [0.1]}}}
    if sweep_project:
        sweep["project"] = sweep_project
    _, sweep_id, (trial,) = run_sweep(tmp_path, sweep, program, agents=1)
    assert trial.state is TrialState.FINISHED and trial.metric("loss") == 0.1

    folder = tmp_path / ".sweeper" / "trials" / sweep_id / "1"
    [line] = [x for x in (folder / "stdout.log").read_text().splitlines() if x.startswith("SEEN ")]
    seen = json.loads(line.removeprefix("SEEN "))
    assert seen == {"env": sweep_id, "sweep_id": None, "lr": 0.1}, "the script still reads the sweep's id"
    said = (folder / "stderr.log").read_text()
    assert "wandb.init(id='own-id-1') is ignored" in said

    (run,) = offline_runs(tmp_path)
    record = run["run"]
    assert "sweep_id" not in record, record
    assert (record["run_id"], record["run_group"]) == (f"{sweep_id}-1", sweep_id)
    # The sweep's project, as under wandb agent; where the sweep names none, the script's own.
    assert record["project"] == (sweep_project or "own-project")
    config = record["config"]["update"]
    assert (config["lr"], config["extra"]) == (0.1, 1)
    assert os.environ.get("WANDB_SWEEP_ID") is None, "the test's own process holds no sweep"
