"""Early stopping end to end: ``sweeper run`` with real agents and trial processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
SWEEPER = str(Path(sys.executable).parent / "sweeper")


def sweeper_cmd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWEEPER, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_bad_configurations_stop_at_a_rung_and_good_ones_finish(tmp_path: Path) -> None:
    sweep = {
        "method": "grid",
        "program": str(SCRIPTS / "curve_trial.py"),
        "metric": {"name": "val_loss", "goal": "minimize"},
        # One agent runs the grid in order: the two good trials set the bar, the bad ones miss it.
        "parameters": {"quality": {"values": [1, 2, 8, 9]}, "epochs": {"value": 10}, "sleep": {"value": 0.3}},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = sweeper_cmd(tmp_path, "run", str(path), "--agents", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = result.stdout.splitlines()[0].split()[1].rstrip(":")
    listing = sweeper_cmd(tmp_path, "trials", sweep_id, "--format", "json")
    assert listing.returncode == 0, listing.stderr
    trials = {t["config"]["quality"]: t for t in json.loads(listing.stdout)}
    assert [trials[q]["state"] for q in (1, 2, 8, 9)] == ["finished", "finished", "stopped", "stopped"]
    assert trials[8]["stop_reason"] == (
        "hyperband: at iteration 2 (rung 1) val_loss=12 is worse than the threshold 3 "
        "(rank 3 of 3; keeps the top 1/2)"
    )
    assert trials[9]["stop_reason"].startswith("hyperband: at iteration 2 (rung 1) val_loss=13.5")
    # Stopped early: fewer than the 10 epochs were logged; the good ones logged all 10.
    assert [len(trials[q]["curves"]["val_loss"]) for q in (1, 2)] == [10, 10]
    assert all(len(trials[q]["curves"]["val_loss"]) < 10 for q in (8, 9))
