"""Running the installed ``sweeper`` command on a sweep file, as a user does, and reading back its trials."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SWEEPER = str(Path(sys.executable).with_name("sweeper"))
SCRIPTS = Path(__file__).parent / "scripts"


def sweeper_cli(*args: str, cwd: Path, timeout: float = 300) -> str:
    """Run ``sweeper ARGS`` in ``cwd``; it must exit 0. Its standard output."""
    done = subprocess.run([SWEEPER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sweep_id_of(output: str) -> str:
    """The sweep id from ``sweeper run``'s output (its ``sweep ID: ...`` line)."""
    line = next((line for line in output.splitlines() if line.startswith("sweep ")), None)
    assert line is not None, output
    return line.split()[1].rstrip(":")


def toy_pbt_sweep(**pbt: Any) -> dict[str, Any]:
    """Population-based training of ``scripts/pbt_trial.py``: two members, 12 steps each."""
    return {
        "method": "pbt",
        "program": str(SCRIPTS / "pbt_trial.py"),
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {
            "lr": {"values": [0.01, 0.02, 0.2, 0.3]},
            "steps": {"value": 12},
            "sleep": {"value": 0.15},
        },
        "sweeper": {"seed": 1, "pbt": {"population": 2, "perturbation_interval": 3, **pbt}},
    }


def restored_from(trial_folder: Path) -> dict:
    """The donor's trial and step a member restarted from, as the trial script printed them."""
    line = next(
        line for line in (trial_folder / "stdout.log").read_text().splitlines() if line.startswith("restored")
    )
    _, _, _, trial, _, _, step = line.split()
    return {"trial": int(trial), "step": int(step)}


def run_and_list(
    cwd: Path, sweep: Mapping[str, Any], *run_args: str, timeout: float = 180
) -> tuple[str, dict[int, dict[str, Any]]]:
    """``sweeper run`` the sweep in ``cwd`` (it must exit 0); its id and its trials by number."""
    (cwd / "sweep.yaml").write_text(yaml.safe_dump(dict(sweep)))
    ran = subprocess.run(
        [SWEEPER, "run", "sweep.yaml", *run_args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    if sweep.get("method") in ("grid", "pbt"):  # both end by themselves: no note says otherwise
        assert "no end of its own" not in ran.stdout, ran.stdout
    if sweep.get("method") == "pbt" and "--agents" in run_args:  # as many agents as members: no waves
        assert "trains in waves" not in ran.stdout, ran.stdout
    sweep_id = sweep_id_of(ran.stdout)
    listing = subprocess.run(
        [SWEEPER, "trials", sweep_id, "--format", "json"], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    return sweep_id, {t["number"]: t for t in json.loads(listing.stdout)}
