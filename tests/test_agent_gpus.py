"""GPU discovery and one trial per GPU.

This machine has no GPU. A small fake ``nvidia-smi`` executable, put first on PATH by the
tests, stands in for the hardware: it prints what the real one prints for
``--query-gpu=index,uuid,name --format=csv,noheader``. Everything after discovery (choosing
GPUs, CUDA_VISIBLE_DEVICES per trial) runs for real.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml
from cli_support import sweep_id_of
from click.testing import CliRunner
from sweeper.agents import gpus as gpus_module
from sweeper.agents.gpus import (
    Gpu,
    GpuSelectionError,
    discover_gpus,
    gpu_groups,
    inherited_devices,
    parse_smi_csv,
    select_gpus,
)

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


def _smi(folder: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.mkdir()
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@needs_no_nvml
def test_why_nvidia_smi_found_no_gpu_is_in_the_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    failing = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    _smi(tmp_path / "failing", f'echo "{failing}"; exit 9\n', monkeypatch)
    with pytest.raises(GpuSelectionError) as caught:
        select_gpus("all", environ={})
    assert f"nvidia-smi exited with status 9: {failing}" in str(caught.value)
    monkeypatch.setattr(gpus_module, "_SMI_TIMEOUT", 0.5)
    _smi(tmp_path / "hung", "sleep 30\n", monkeypatch)
    with pytest.raises(GpuSelectionError, match=r"nvidia-smi did not answer within 0.5 s"):
        select_gpus("all", environ={})


def test_a_hung_nvml_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stand-in blocks as NVML does with a driver in a bad state; the real call runs the same way.
    release = threading.Event()
    monkeypatch.setattr(gpus_module, "_from_nvml", lambda: release.wait(30))
    monkeypatch.setattr(gpus_module, "_SMI_TIMEOUT", 0.3)
    monkeypatch.setenv("PATH", "/nonexistent")  # and no nvidia-smi to fall back on
    problems: list[str] = []
    started = time.monotonic()
    assert discover_gpus(problems) == [] and problems == ["NVML did not answer within 0.3 s"]
    assert time.monotonic() - started < 10
    release.set()
    problems = []

    def broken() -> None:
        raise RuntimeError("nvmlInit: driver/library version mismatch")

    monkeypatch.setattr(gpus_module, "_from_nvml", broken)
    assert discover_gpus(problems) == [] and problems == [
        "NVML failed: nvmlInit: driver/library version mismatch"
    ]


def test_select_all_some_and_bad_choices() -> None:
    found = [Gpu("0"), Gpu("1"), Gpu("2")]
    unset: dict[str, str] = {}  # no CUDA_VISIBLE_DEVICES: every GPU discovery finds
    assert select_gpus("all", found, unset) == found
    assert [g.index for g in select_gpus("2,0", found, unset)] == ["2", "0"]
    with pytest.raises(GpuSelectionError, match="--slots"):
        select_gpus("all", [], unset)
    with pytest.raises(GpuSelectionError, match="index 5"):
        select_gpus("0,5", found, unset)
    with pytest.raises(GpuSelectionError, match="indices like"):
        select_gpus("first", found, unset)
    with pytest.raises(GpuSelectionError, match="twice"):
        select_gpus("1,1", found, unset)
    with pytest.raises(GpuSelectionError, match="indices like"):  # a digit, to str.isdigit
        select_gpus("\u00b2", found, unset)
    for typo in ("0,,1", "0,1,", ",0"):
        with pytest.raises(GpuSelectionError, match=f"indices like 0,1,3; got '{typo}' \\(an empty entry\\)"):
            select_gpus(typo, found, unset)


def test_indices_named_where_no_gpu_is_found_are_taken_as_given_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # NVML hidden in a container: the devices may be there all the same.
    with caplog.at_level(logging.WARNING, logger="sweeper.agents.gpus"):
        assert [g.index for g in select_gpus("0,1", [], {})] == ["0", "1"]
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("--gpus 0,1: no NVIDIA GPU found (neither NVML nor nvidia-smi reports one); "), (
        said
    )
    # So is an inherited CUDA_VISIBLE_DEVICES that nothing here confirms.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweeper.agents.gpus"):
        assert [g.index for g in select_gpus("all", [], {"CUDA_VISIBLE_DEVICES": "0"})] == ["0"]
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("--gpus all: no NVIDIA GPU found (neither NVML nor nvidia-smi reports one); "), (
        said
    )
    assert "taking CUDA_VISIBLE_DEVICES='0' as given" in said


def test_inherited_cuda_visible_devices_is_read_as_cuda_reads_it() -> None:
    assert inherited_devices({}) is None
    assert inherited_devices({"CUDA_VISIBLE_DEVICES": "3, 1"}) == ["3", "1"]
    assert inherited_devices({"CUDA_VISIBLE_DEVICES": "GPU-2222,MIG-abcd"}) == ["GPU-2222", "MIG-abcd"]
    assert inherited_devices({"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == ["0"]  # CUDA stops at -1
    for none_visible in ("", "-1", "NoDevFiles"):
        assert inherited_devices({"CUDA_VISIBLE_DEVICES": none_visible}) == []


def test_an_inherited_cuda_visible_devices_bounds_the_choice() -> None:
    found = parse_smi_csv(SMI_OUTPUT)  # the machine has three GPUs; this job was given two
    job = {"CUDA_VISIBLE_DEVICES": "2,0"}
    assert [g.index for g in select_gpus("all", found, job)] == ["2", "0"]
    assert [g.index for g in select_gpus("1", found, job)] == ["0"]  # CUDA's numbering: 0 is "2"
    with pytest.raises(GpuSelectionError, match=r"CUDA_VISIBLE_DEVICES='2,0' makes 2 GPU\(s\) visible"):
        select_gpus("0,2", found, job)
    with pytest.raises(GpuSelectionError, match="leaves this agent no GPU"):
        select_gpus("all", found, {"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(GpuSelectionError, match="names a GPU twice"):  # two trials on one GPU
        select_gpus("all", found, {"CUDA_VISIBLE_DEVICES": "2,2"})
    with pytest.raises(GpuSelectionError, match="indices like"):
        select_gpus("\u00b2", found, job)
    # Names only where the entry surely is that GPU: a UUID prefix, or an index in PCI bus order.
    by_uuid = select_gpus("all", found, {"CUDA_VISIBLE_DEVICES": "GPU-3333"})
    assert by_uuid == [Gpu("GPU-3333", found[2].uuid, "NVIDIA GeForce RTX 4090, Founders")]
    assert str(by_uuid[0]) == "GPU-3333 (NVIDIA GeForce RTX 4090, Founders)"
    assert select_gpus("all", found, job)[0].name == ""  # CUDA counts fastest first by default
    in_bus_order = {**job, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert select_gpus("all", found, in_bus_order)[0].name == "NVIDIA GeForce RTX 4090, Founders"


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


def _sweep_file(tmp_path: Path, n: int) -> None:
    """``sweep.yaml``: an n-point grid of the script that writes what each trial saw."""
    raw = {
        "method": "grid",
        "program": str(SCRIPTS / "dump_env.py"),
        "parameters": {"i": {"values": list(range(n))}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))


def _gpus_by_agent(db: str, sweep_id: str, seen: dict[int, str]) -> dict[str, set[str]]:
    """The CUDA_VISIBLE_DEVICES values each agent slot's trials saw."""
    by_agent: dict[str, set[str]] = {}
    with open_store(db) as store:
        for trial in store.list_trials(sweep_id):
            by_agent.setdefault(trial.agent or "", set()).add(seen[trial.number])
    return by_agent


def _seen_env(tmp_path: Path, sweep_id: str) -> dict[int, dict[str, str]]:
    seen = {}
    for path in (tmp_path / ".sweeper" / "trials" / sweep_id).glob("*/seen.json"):
        seen[int(path.parent.name)] = json.loads(path.read_text())["env"]
    return seen


def _seen_gpus(tmp_path: Path, sweep_id: str) -> dict[int, str]:
    return {n: env.get("CUDA_VISIBLE_DEVICES", "") for n, env in _seen_env(tmp_path, sweep_id).items()}


@needs_no_nvml
def test_gpus_all_runs_each_trial_on_one_gpu(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    db, sweep_id = _sweep(tmp_path, 6)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--gpus", "all"])
    assert result.exit_code == 0, result.output
    assert "using 3 GPU(s)" in result.output and "NVIDIA GeForce RTX 4090" in result.output
    seen = _seen_gpus(tmp_path, sweep_id)
    assert len(seen) == 6
    assert set(seen.values()) <= {"0", "1", "2"} and all(v for v in seen.values())
    by_agent = _gpus_by_agent(db, sweep_id, seen)
    # Each slot keeps its own GPU for every trial it runs.
    assert all(len(gpus) == 1 for gpus in by_agent.values())
    # ... numbered as nvidia-smi numbers them, whatever CUDA's default order would be.
    assert {env.get("CUDA_DEVICE_ORDER") for env in _seen_env(tmp_path, sweep_id).values()} == {"PCI_BUS_ID"}


@needs_no_nvml
def test_an_agent_in_a_job_given_some_gpus_uses_only_those(
    fake_smi: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")  # as Slurm sets it: two of the machine's three
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    db, sweep_id = _sweep(tmp_path, 4)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--gpus", "all"])
    assert result.exit_code == 0, result.output
    assert "using 2 GPU(s)" in result.output
    seen = _seen_env(tmp_path, sweep_id)
    assert len(seen) == 4 and {env["CUDA_VISIBLE_DEVICES"] for env in seen.values()} == {"2", "0"}
    # The job's entries are passed on as written, in the order its environment counts them.
    assert all("CUDA_DEVICE_ORDER" not in env for env in seen.values())


@needs_no_nvml
def test_gpus_some_picks_only_those(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    db, sweep_id = _sweep(tmp_path, 4)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--gpus", "0,2"])
    assert result.exit_code == 0, result.output
    assert set(_seen_gpus(tmp_path, sweep_id).values()) <= {"0", "2"}


@needs_no_nvml
@pytest.mark.parametrize(("command", "flag"), [("run", "--agents"), ("agent", "--slots")])
def test_gpus_all_without_gpus_is_a_usage_error(tmp_path: Path, monkeypatch, command, flag) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    db, sweep_id = _sweep(tmp_path, 1)
    target = "sweep.yaml" if command == "run" else sweep_id
    result = CliRunner().invoke(main, [command, target, "--db", db, "--gpus", "all"])
    assert result.exit_code == 2
    # The hint names the option of the command that was run.
    assert "no NVIDIA GPU found" in result.output and f"use {flag} N to run N trials" in result.output
    with open_store(db) as store:
        assert store.list_trials(sweep_id) == []  # nothing was leased


def test_slots_without_gpus_set_no_cuda_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    db, sweep_id = _sweep(tmp_path, 3)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--slots", "2"])
    assert result.exit_code == 0, result.output
    assert set(_seen_gpus(tmp_path, sweep_id).values()) == {""}


@needs_no_nvml
def test_sweeper_run_with_gpus_runs_one_trial_per_gpu(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _sweep_file(tmp_path, 4)
    result = CliRunner().invoke(main, ["run", "sweep.yaml", "--gpus", "0,2"])
    assert result.exit_code == 0, result.output
    assert "using 2 GPU(s): GPU 0 (NVIDIA A100-SXM4-40GB), GPU 2" in result.output
    sweep_id = sweep_id_of(result.output)
    seen = _seen_gpus(tmp_path, sweep_id)
    assert len(seen) == 4 and set(seen.values()) == {"0", "2"}


@pytest.mark.parametrize(("command", "flag"), [("run", "--agents"), ("agent", "--slots")])
def test_gpus_with_another_parallelism_flag_is_a_usage_error(
    tmp_path: Path, monkeypatch, command, flag
) -> None:
    monkeypatch.chdir(tmp_path)
    db, sweep_id = _sweep(tmp_path, 1)
    target = "sweep.yaml" if command == "run" else sweep_id
    result = CliRunner().invoke(main, [command, target, "--db", db, "--gpus", "all", flag, "2"])
    assert result.exit_code == 2
    assert f"pass either --gpus or {flag}, not both" in result.output
    with open_store(db) as store:
        assert [s.id for s in store.list_sweeps()] == [sweep_id] and store.list_trials(sweep_id) == []


@needs_no_nvml
def test_trials_per_gpu_shares_each_gpu_between_slots(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    db, sweep_id = _sweep(tmp_path, 8)
    result = CliRunner().invoke(
        main, ["agent", sweep_id, "--db", db, "--gpus", "0,1", "--trials-per-gpu", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "2 trials on each at once" in result.output and "4 trial(s) at a time" in result.output
    seen = _seen_gpus(tmp_path, sweep_id)
    assert len(seen) == 8 and set(seen.values()) == {"0", "1"}
    by_agent = _gpus_by_agent(db, sweep_id, seen)
    assert len(by_agent) <= 4 and all(len(gpus) == 1 for gpus in by_agent.values())


def test_gpu_groups_keep_neighbours_together_and_say_what_is_left() -> None:
    found = [Gpu(str(i)) for i in range(7)]
    groups, left = gpu_groups(found, 2)
    assert [[g.index for g in group] for group in groups] == [["0", "1"], ["2", "3"], ["4", "5"]]
    assert left == [Gpu("6")]
    assert gpu_groups(found, 1) == ([[g] for g in found], [])
    with pytest.raises(GpuSelectionError, match=r"--gpus-per-trial 8: only 7 GPU\(s\) to use here \(GPU 0, "):
        gpu_groups(found, 8)
    migs = [Gpu("MIG-aaaa"), Gpu("MIG-bbbb")]  # CUDA shows a process one MIG instance only
    assert gpu_groups(migs, 1)[0] == [[migs[0]], [migs[1]]]
    with pytest.raises(GpuSelectionError, match="MIG-aaaa is a MIG instance"):
        gpu_groups(migs, 2)


@needs_no_nvml
def test_gpus_per_trial_gives_each_trial_gpus_of_its_own(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,2,1,0")  # a job given four GPUs
    db, sweep_id = _sweep(tmp_path, 6)
    result = CliRunner().invoke(
        main, ["agent", sweep_id, "--db", db, "--gpus", "all", "--gpus-per-trial", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "using 4 GPU(s)" in result.output and "2 per trial: 2 trial(s) at once" in result.output
    assert "2 trial(s) at a time" in result.output
    seen = _seen_gpus(tmp_path, sweep_id)
    assert len(seen) == 6 and set(seen.values()) == {"3,2", "1,0"}
    by_agent = _gpus_by_agent(db, sweep_id, seen)
    # Each slot keeps its GPUs for every trial it runs.
    assert len(by_agent) == 2 and all(len(gpus) == 1 for gpus in by_agent.values())


@needs_no_nvml
def test_gpus_per_trial_says_which_gpus_it_leaves_unused(fake_smi: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _sweep_file(tmp_path, 3)
    result = CliRunner().invoke(main, ["run", "sweep.yaml", "--gpus", "all", "--gpus-per-trial", "2"])
    assert result.exit_code == 0, result.output
    assert (
        "2 per trial: 1 trial(s) at once; GPU 2 (NVIDIA GeForce RTX 4090, Founders) left unused"
        in result.output
    )
    seen = _seen_env(tmp_path, sweep_id_of(result.output))
    assert len(seen) == 3 and {env["CUDA_VISIBLE_DEVICES"] for env in seen.values()} == {"0,1"}
    assert {env.get("CUDA_DEVICE_ORDER") for env in seen.values()} == {"PCI_BUS_ID"}


@needs_no_nvml
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--gpus-per-trial", "2"], "--gpus-per-trial needs --gpus"),
        (
            ["--gpus", "all", "--gpus-per-trial", "2", "--trials-per-gpu", "2"],
            "pass either --trials-per-gpu or",
        ),
        (
            ["--gpus", "0,1", "--gpus-per-trial", "3"],
            "--gpus-per-trial 3: only 2 GPU(s) to use here (GPU 0 (",
        ),
    ],
)
def test_gpus_per_trial_that_cannot_be_met_is_a_usage_error(
    fake_smi: Path, tmp_path: Path, monkeypatch, args: list[str], said: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    db, sweep_id = _sweep(tmp_path, 1)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, *args])
    assert result.exit_code == 2 and said in result.output, result.output
    with open_store(db) as store:
        assert store.list_trials(sweep_id) == []  # nothing was leased


def test_trials_per_gpu_without_gpus_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db, sweep_id = _sweep(tmp_path, 1)
    result = CliRunner().invoke(main, ["agent", sweep_id, "--db", db, "--trials-per-gpu", "2"])
    assert result.exit_code == 2 and "--trials-per-gpu needs --gpus" in result.output


@needs_no_nvml
def test_a_broken_gpu_gives_up_alone_and_its_configurations_run_on_the_others(
    fake_smi: Path, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "train.py").write_text(
        "import os, sys, time\n"
        "if os.environ['CUDA_VISIBLE_DEVICES'] == '2':\n"
        "    sys.exit('CUDA error: uncorrectable ECC error encountered')\n"
        "time.sleep(0.3)\n"
    )
    raw = {"method": "grid", "program": "train.py", "parameters": {"i": {"values": list(range(6))}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    with caplog.at_level("WARNING", logger="sweeper.local"):
        result = CliRunner().invoke(main, ["run", "sweep.yaml", "--gpus", "0,2"])
    assert result.exit_code == 0, result.output
    # Every configuration that failed on GPU 2 ran again on GPU 0, not on GPU 2 again.
    store = open_store(str(tmp_path / ".sweeper" / "sweeper.db"))
    trials = store.list_trials(sweep_id_of(result.output))
    store.close()
    finished = sorted(t.config["i"] for t in trials if t.state.value == "finished")
    assert finished == list(range(6)), [(t.number, t.config, t.state.value) for t in trials]
    # GPU 2's slot said at once that it stopped; the run's last word is the sweep's, not that slot's.
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and re.fullmatch(
        r"GPU 2 stops taking trials: 3 trials in a row failed \(the last, trial \d+: CUDA error: "
        r"uncorrectable ECC error encountered\); the others go on",
        said[0],
    ), said
    assert "complete" in result.output and "Fix the script" not in result.output


@needs_no_nvml
def test_a_population_larger_than_the_gpus_is_told_how_to_fit(
    fake_smi: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    raw = {
        "method": "pbt",
        "program": str(SCRIPTS / "dump_env.py"),
        "metric": {"name": "acc", "goal": "maximize"},
        "parameters": {"lr": {"values": [0.1, 0.2]}},
        "sweeper": {"pbt": {"population": 3}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["run", "sweep.yaml", "--gpus", "0,2", "--count", "1"])
    assert result.exit_code == 0, result.output
    assert "population of 3 with 2 trial(s) at a time" in result.output
    assert "pass --trials-per-gpu 2 (or start more agents" in result.output  # --agents is refused with --gpus

    result = CliRunner().invoke(
        main, ["run", "sweep.yaml", "--gpus", "all", "--gpus-per-trial", "2", "--count", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "population of 3 with 1 trial(s) at a time" in result.output
    assert "pass --gpus with 6 GPUs (or start more agents" in result.output


def test_the_agent_command_to_go_on_keeps_the_gpu_options() -> None:
    from sweeper.cli.run import _parallel_flags

    assert _parallel_flags("all", None, 2, None) == " --gpus all --gpus-per-trial 2"
    assert _parallel_flags("0,1", 2, None, None) == " --gpus 0,1 --trials-per-gpu 2"
    assert _parallel_flags(None, None, None, 3) == " --slots 3"
