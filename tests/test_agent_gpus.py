"""GPU discovery and one trial per GPU.

This machine has no GPU. A small fake ``nvidia-smi`` executable, put first on PATH by the
tests, stands in for the hardware: it prints what the real one prints for
``--query-gpu=index,uuid,name --format=csv,noheader``. Everything after discovery (choosing
GPUs, CUDA_VISIBLE_DEVICES per trial) runs for real.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sweeper.agents.gpus import Gpu, GpuSelectionError, discover_gpus, parse_smi_csv, select_gpus

from sweeper.cli import main
from sweeper.coordinator import Coordinator
from sweeper.spec import parse_sweep
from sweeper.store import open_store

SCRIPTS = Path(__file__).parent / "scripts"
SMI_OUTPUT = (
    "0, GPU-11111111-aaaa-bbbb-cccc-000000000000, NVIDIA A100-SXM4-40GB\n"
    "1, GPU-22222222-aaaa-bbbb-cccc-000000000000, NVIDIA A100-SXM4-40GB\n"
    "2, GPU-33333333-aaaa-bbbb-cccc-000000000000, NVIDIA GeForce RTX 4090, Founders\n"
)


def _nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


needs_no_nvml = pytest.mark.skipif(_nvml_present(), reason="a real NVML answers before the fake nvidia-smi")


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in ``nvidia-smi`` first on PATH; it refuses any query but the one the agent makes."""
    folder = tmp_path / "fakebin"
    folder.mkdir()
    exe = folder / "nvidia-smi"
    exe.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--query-gpu=index,uuid,name" ] && [ "$2" = "--format=csv,noheader" ]; then\n'
        f"  cat <<'END'\n{SMI_OUTPUT}END\n"
        "  exit 0\n"
        "fi\n"
        "echo unexpected arguments >&2; exit 9\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_parse_smi_csv_keeps_commas_in_names_and_skips_noise() -> None:
    gpus = parse_smi_csv(SMI_OUTPUT + "\nNo devices were found\n")
    assert [g.index for g in gpus] == ["0", "1", "2"]
    assert gpus[2].name == "NVIDIA GeForce RTX 4090, Founders"
    assert gpus[0].uuid.startswith("GPU-1111")


@needs_no_nvml
def test_discovery_through_nvidia_smi(fake_smi: Path) -> None:
    assert [g.index for g in discover_gpus()] == ["0", "1", "2"]


@needs_no_nvml
def test_no_gpu_anywhere_finds_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert discover_gpus() == []


def test_select_all_some_and_bad_choices() -> None:
    found = [Gpu("0"), Gpu("1"), Gpu("2")]
    assert select_gpus("all", found) == found
    assert [g.index for g in select_gpus("2,0", found)] == ["2", "0"]
    with pytest.raises(GpuSelectionError, match="--slots"):
        select_gpus("all", [])
    with pytest.raises(GpuSelectionError, match="index 5"):
        select_gpus("0,5", found)
    with pytest.raises(GpuSelectionError, match="indices like"):
        select_gpus("first", found)
    with pytest.raises(GpuSelectionError, match="twice"):
        select_gpus("1,1", found)
    # Named explicitly where discovery sees nothing (NVML hidden in a container): taken as given.
    assert [g.index for g in select_gpus("0,1", [])] == ["0", "1"]


def _sweep(tmp_path: Path, n: int) -> tuple[str, str]:
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    raw = {
        "method": "grid",
        "program": str(SCRIPTS / "dump_env.py"),
        "parameters": {"i": {"values": list(range(n))}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    with open_store(db) as store:
        sweep = Coordinator(store).create_sweep(parse_sweep(raw))
    return db, sweep.id


def _seen_gpus(tmp_path: Path, sweep_id: str) -> dict[int, str]:
    seen = {}
    for path in (tmp_path / ".sweeper" / "trials" / sweep_id).glob("*/seen.json"):
        data = json.loads(path.read_text())
        seen[int(path.parent.name)] = data["env"].get("CUDA_VISIBLE_DEVICES", "")
    return seen


@needs_no_nvml
def test_gpus_all_runs_each_trial_on_one_gpu(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db, sweep_id = _sweep(tmp_path, 6)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--gpus", "all"])
    assert result.exit_code == 0, result.output
    assert "using 3 GPU(s)" in result.output and "NVIDIA GeForce RTX 4090" in result.output
    seen = _seen_gpus(tmp_path, sweep_id)
    assert len(seen) == 6
    assert set(seen.values()) <= {"0", "1", "2"} and all(v for v in seen.values())
    with open_store(db) as store:
        by_agent: dict[str, set[str]] = {}
        for trial in store.list_trials(sweep_id):
            by_agent.setdefault(trial.agent or "", set()).add(seen[trial.number])
    # Each slot keeps its own GPU for every trial it runs.
    assert all(len(gpus) == 1 for gpus in by_agent.values())


@needs_no_nvml
def test_gpus_some_picks_only_those(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db, sweep_id = _sweep(tmp_path, 4)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--gpus", "0,2"])
    assert result.exit_code == 0, result.output
    assert set(_seen_gpus(tmp_path, sweep_id).values()) <= {"0", "2"}


@needs_no_nvml
def test_gpus_all_without_gpus_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    db, sweep_id = _sweep(tmp_path, 1)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--gpus", "all"])
    assert result.exit_code == 2
    assert "no NVIDIA GPU found" in result.output and "--slots" in result.output
    with open_store(db) as store:
        assert store.list_trials(sweep_id) == []  # nothing was leased


def test_slots_without_gpus_set_no_cuda_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    db, sweep_id = _sweep(tmp_path, 3)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--slots", "2"])
    assert result.exit_code == 0, result.output
    assert set(_seen_gpus(tmp_path, sweep_id).values()) == {""}
