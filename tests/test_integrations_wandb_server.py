"""`sweeper server` keeps a sweep's W&B run across its own restarts: read back from what W&B wrote
offline, after a real server, `sweeper sweep` and remote `sweeper agent` runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.trials import TrialState

pytest.importorskip("wandb")
pytest.importorskip("fastapi")
from cli_support import sweeper_cli  # noqa: E402
from server_helpers import TOKEN, start_server  # noqa: E402
from trackers_support import offline_runs, write_grid_sweep  # noqa: E402


def test_a_restarted_server_carries_on_the_sweep_run_and_repeats_nothing(tmp_path: Path) -> None:
    write_grid_sweep(tmp_path, [0.4, 0.1, 0.3, 0.2], "{wandb: {project: restarts, mode: offline}}")
    records = tmp_path / "records"  # where the server writes the sweep run; the agents write elsewhere
    env = {"WANDB_DIR": str(records), "WANDB_SILENT": "true"}
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()

    server = start_server(db, tmp_path / "server", env=env)
    try:
        where = ["--coordinator", server.url, "--token", TOKEN]
        sweep_id = sweeper_cli("sweep", "sweep.yaml", *where, cwd=tmp_path).split()[0]
        sweeper_cli("agent", sweep_id, "--count", "2", *where, cwd=agent_dir)
        server.stop()  # SIGTERM: the server sends what waits for W&B, then exits
        server = start_server(db, tmp_path / "server", env=env, port=server.port)
        sweeper_cli("agent", sweep_id, *where, cwd=agent_dir)  # the other two trials
        trials = server.client().trials(sweep_id)
    finally:
        server.stop()

    assert sorted(t.state for t in trials) == [TrialState.FINISHED] * 4
    runs = [r for r in offline_runs(records) if r["run_id"] == f"{sweep_id}-sweep"]
    assert len(runs) == 2, "one sweep run written by each server process"
    history = [row for run in runs for row in run["history"]]
    logged = [row["trial"] for row in history if "trial" in row]
    assert sorted(logged) == sorted(t.number for t in trials)  # each ended trial once
    steps = [row["_step"] for row in history]
    assert steps == sorted(set(steps)), "the restarted server's rows must follow the earlier ones"
    assert len([row for row in history if "leaderboard" in row]) <= 4  # once per change, at most
    ended = sorted(trials, key=lambda t: (t.ended_at, t.number))
    best = [min(t.config["lr"] for t in ended[: i + 1]) / 3 for i in range(4)]
    by_trial = {row["trial"]: row["best_loss"] for row in history if "trial" in row}
    assert [by_trial[t.number] for t in ended] == pytest.approx(best)
    assert runs[-1]["summary"]["best_loss"] == pytest.approx(0.1 / 3)
