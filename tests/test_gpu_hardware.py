"""The GPU paths on real NVIDIA hardware: discovery, one trial per GPU, CUDA_VISIBLE_DEVICES as CUDA
reads it, GPU memory given back when a trial is stopped, and the PyTorch examples training on the GPU;
on a machine with two GPUs or more, trials of two GPUs each (``--gpus-per-trial 2``, the torchrun example).

Skipped where no GPU is found or PyTorch cannot use one (CI machines have none); on a GPU machine,
``pytest tests/test_gpu_hardware.py`` runs them. Each trial (``scripts/cuda_probe.py``) writes what
CUDA showed it, and the GPU's UUID ties that to what NVML says the agent handed out.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import SCRIPTS, SWEEPER, sweep_id_of
from server_helpers import TOKEN, serving
from sweeper.agents.gpus import Gpu, _from_nvidia_smi, _from_nvml, discover_gpus

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
GPUS = discover_gpus()


@functools.cache
def torch_name() -> str:
    """The name PyTorch gives the first GPU; empty where it cannot use one."""
    if not GPUS:
        return ""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return done.stdout.strip() if done.returncode == 0 else ""


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GPUS, reason="no NVIDIA GPU here (neither NVML nor nvidia-smi reports one)"),
]
needs_cuda_torch = pytest.mark.skipif(
    not torch_name(), reason="PyTorch here cannot use the GPU (a CPU build, or no driver)"
)
needs_two_gpus = pytest.mark.skipif(len(GPUS) < 2, reason="one GPU here; a trial on two needs two")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


def sweeper(folder: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [SWEEPER, *args], cwd=folder, capture_output=True, text=True, timeout=timeout, env=env or _env()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_") and k != "CUDA_VISIBLE_DEVICES"
    }
    return {**env, **extra}


def probe_sweep(folder: Path, points: int, **values: Any) -> Path:
    raw = {
        "method": "grid",
        "program": str(SCRIPTS / "cuda_probe.py"),
        "parameters": {"i": {"values": list(range(points))}, **{k: {"value": v} for k, v in values.items()}},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def probes(folder: Path, sweep_id: str) -> dict[int, dict[str, Any]]:
    found = (folder / ".sweeper" / "trials" / sweep_id).glob("*/cuda.json")
    return {int(p.parent.name): json.loads(p.read_text()) for p in found}


def gpu_of(seen: dict[str, Any]) -> Gpu:
    """The GPU NVML knows by the UUID that CUDA reported inside the trial."""
    (gpu,) = [g for g in GPUS if g.uuid.removeprefix("GPU-") == seen["uuid"].removeprefix("GPU-")]
    return gpu


def memory_used_mib(index: str) -> int:
    out = subprocess.run(
        ["nvidia-smi", "-i", index, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no nvidia-smi here")
def test_nvml_and_nvidia_smi_list_the_same_gpus() -> None:
    assert _from_nvml() == _from_nvidia_smi([]) == GPUS
    assert all(g.uuid.startswith("GPU-") and g.name for g in GPUS)


@needs_cuda_torch
def test_agents_over_http_run_one_trial_per_gpu_each_on_the_gpu_it_was_given(tmp_path: Path) -> None:
    points = 2 * len(GPUS) + 1
    probe_sweep(tmp_path, points, work_s=1.5)
    with serving(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server") as server:
        sweep_id = sweeper(
            tmp_path, "sweep", "sweep.yaml", "--coordinator", server.url, "--token", TOKEN
        ).split()[-1]
        out = sweeper(
            tmp_path, "agent", sweep_id, "--coordinator", server.url, "--token", TOKEN, "--gpus", "all"
        )
        trials = server.client().trials(sweep_id)
    assert f"using {len(GPUS)} GPU(s)" in out and GPUS[0].name in out
    assert sorted(t.state.value for t in trials) == ["finished"] * points
    seen = probes(tmp_path, sweep_id)
    assert len(seen) == points
    for s in seen.values():
        assert s["count"] == 1 and s["finite"] and s["order"] == "PCI_BUS_ID"
        assert gpu_of(s).index == s["visible"]  # CUDA's one visible GPU is the one the agent named
    assert {s["visible"] for s in seen.values()} == {g.index for g in GPUS}
    for gpu in GPUS:  # never two trials on one GPU at once
        spans = sorted((s["start"], s["end"]) for s in seen.values() if s["visible"] == gpu.index)
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


@needs_cuda_torch
def test_trials_per_gpu_share_one_gpu_at_once(tmp_path: Path) -> None:
    probe_sweep(tmp_path, 4, work_s=4.0)
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    out = sweeper(tmp_path, "run", "sweep.yaml", "--db", db, "--gpus", "0", "--trials-per-gpu", "2")
    assert "2 trials on each at once" in out
    seen = sorted(probes(tmp_path, sweep_id_of(out)).values(), key=lambda s: s["start"])
    assert len(seen) == 4 and {s["visible"] for s in seen} == {"0"}
    overlapping = [b for a, b in zip(seen, seen[1:], strict=False) if b["start"] < a["end"]]
    assert overlapping, "no two trials ran on the GPU at the same time"


@needs_cuda_torch
@needs_two_gpus
def test_gpus_per_trial_gives_each_trial_gpus_of_its_own(tmp_path: Path) -> None:
    groups = len(GPUS) // 2
    probe_sweep(tmp_path, 2 * groups + 1, work_s=1.5)
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    out = sweeper(tmp_path, "run", "sweep.yaml", "--db", db, "--gpus", "all", "--gpus-per-trial", "2")
    assert f"2 per trial: {groups} trial(s) at once" in out
    seen = probes(tmp_path, sweep_id_of(out))
    assert len(seen) == 2 * groups + 1
    pairs = {f"{GPUS[2 * i].index},{GPUS[2 * i + 1].index}" for i in range(groups)}
    assert {s["visible"] for s in seen.values()} == pairs
    for s in seen.values():
        assert s["count"] == 2 and s["finite"]
        assert gpu_of(s).index == s["visible"].split(",")[0]  # CUDA's device 0 is the pair's first
    for pair in pairs:  # never two trials on one pair at once
        spans = sorted((s["start"], s["end"]) for s in seen.values() if s["visible"] == pair)
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


@needs_cuda_torch
def test_an_inherited_cuda_visible_devices_uuid_is_what_the_trial_sees(tmp_path: Path) -> None:
    chosen = GPUS[-1]
    probe_sweep(tmp_path, 2, work_s=0.2)
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    sweep_id = sweeper(tmp_path, "sweep", "sweep.yaml", "--db", db).split()[-1]
    env = _env(CUDA_VISIBLE_DEVICES=chosen.uuid)  # as a scheduler hands a job one GPU
    out = sweeper(tmp_path, "agent", sweep_id, "--db", db, "--gpus", "all", env=env)
    assert f"using 1 GPU(s): {chosen.uuid} ({chosen.name})" in out
    seen = probes(tmp_path, sweep_id)
    assert len(seen) == 2
    assert all(s["visible"] == chosen.uuid and gpu_of(s) == chosen and s["count"] == 1 for s in seen.values())


@needs_cuda_torch
def test_a_cancelled_trial_gives_its_gpu_memory_back_helpers_in_their_own_session_too(tmp_path: Path) -> None:
    gpu = GPUS[0]
    hold_mib = 4096
    before = memory_used_mib(gpu.index)
    probe_sweep(tmp_path, 1, work_s=0.1, hold_mib=hold_mib, hold_s=600, child=1)
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    sweep_id = sweeper(tmp_path, "sweep", "sweep.yaml", "--db", db).split()[-1]
    agent = subprocess.Popen(
        [SWEEPER, "agent", sweep_id, "--db", db, "--gpus", gpu.index, "--grace", "5"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        trial = tmp_path / ".sweeper" / "trials" / sweep_id / "1"
        wait_for(lambda: (trial / "holding").exists() and (trial / "child_holding").exists(), "memory held")
        held = memory_used_mib(gpu.index)
        assert held >= before + 2 * hold_mib, (before, held)
        sweeper(tmp_path, "cancel", sweep_id, "--db", db)
        out, _ = agent.communicate(timeout=60)
    finally:
        agent.kill()
    assert agent.returncode == 0, out
    # The driver frees a process's memory as it exits; the helper in its own session was killed too.
    wait_for(lambda: memory_used_mib(gpu.index) < before + 512, f"GPU memory back to {before} MiB", 30)
    (listing,) = json.loads(sweeper(tmp_path, "trials", sweep_id, "--db", db, "--format", "json"))
    assert listing["state"] == "stopped", listing


def example_copy(folder: Path, example: str, sweep_file: str, **values: Any) -> Path:
    sweep = yaml.safe_load((SWEEPS / example / sweep_file).read_text())
    sweep["program"] = str(SWEEPS / example / "train.py")
    sweep["parameters"].update({k: {"value": v} for k, v in values.items()})
    path = folder / f"{example}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@needs_cuda_torch
def test_the_cnn_example_trains_on_the_gpu(tmp_path: Path) -> None:
    example_copy(tmp_path, "cnn-digits", "random.yaml", epochs=3)
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    out = sweeper(tmp_path, "run", "cnn-digits.yaml", "--db", db, "--gpus", "all", "--count", "2")
    sweep_id = sweep_id_of(out)
    trials = json.loads(sweeper(tmp_path, "trials", sweep_id, "--db", db, "--format", "json"))
    assert [t["state"] for t in trials] == ["finished", "finished"], out
    for t in trials:
        stdout = (tmp_path / ".sweeper" / "trials" / sweep_id / str(t["number"]) / "stdout.log").read_text()
        assert f"training on cuda ({torch_name()})" in stdout, stdout
        assert [step for step, _ in t["curves"]["val_acc"]] == [0, 1, 2]


@needs_cuda_torch
@needs_two_gpus
def test_the_data_parallel_example_trains_on_two_gpus_a_trial(tmp_path: Path) -> None:
    example_copy(tmp_path, "ddp-digits", "grid.yaml", epochs=3)
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    out = sweeper(
        tmp_path,
        "run",
        "ddp-digits.yaml",
        "--db",
        db,
        "--gpus",
        "all",
        "--gpus-per-trial",
        "2",
        "--count",
        "2",
    )
    sweep_id = sweep_id_of(out)
    trials = json.loads(sweeper(tmp_path, "trials", sweep_id, "--db", db, "--format", "json"))
    assert [t["state"] for t in trials] == ["finished", "finished"], out
    for t in trials:
        stdout = (tmp_path / ".sweeper" / "trials" / sweep_id / str(t["number"]) / "stdout.log").read_text()
        assert "training on 2 process(es), cuda" in stdout, stdout
        assert [step for step, _ in t["curves"]["val_acc"]] == [0, 1, 2]


@needs_cuda_torch
def test_population_based_training_hands_gpu_checkpoints_between_members(tmp_path: Path) -> None:
    sweep_file = example_copy(tmp_path, "mlp-core", "pbt.yaml", epochs=60, batch_size=8)
    sweep = yaml.safe_load(sweep_file.read_text())
    sweep["sweeper"]["pbt"] = {"population": 3, "perturbation_interval": 10, "quantile": 0.34}
    sweep_file.write_text(yaml.safe_dump(sweep))
    db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    out = sweeper(tmp_path, "run", sweep_file.name, "--db", db, "--gpus", "0", "--trials-per-gpu", "3")
    sweep_id = sweep_id_of(out)
    trials = json.loads(sweeper(tmp_path, "trials", sweep_id, "--db", db, "--format", "json"))
    assert {t["state"] for t in trials} <= {"finished", "stopped"}, out
    restarted = [t for t in trials if t["restore_from"] and t["curves"].get("val_acc")]
    assert restarted, "no member restarted from another member's checkpoint"
    # A restarted member loaded the donor's CUDA tensors and carried on from the donor's epoch.
    assert all(t["curves"]["val_acc"][0][0] > 0 for t in restarted)
    # (a member restored from a donor's last epoch finishes with nothing left to train)
    best = max(t["metrics"].get("val_acc", 0.0) for t in trials if t["state"] == "finished")
    assert best > 0.8
