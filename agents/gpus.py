"""Finding this machine's NVIDIA GPUs, so an agent can run one trial per GPU.

First through NVML (``libnvidia-ml.so.1`` via ctypes, no Python package needed), then through
``nvidia-smi``. Each GPU is named by its index, which is what ``CUDA_VISIBLE_DEVICES`` takes.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass

_NVML_SUCCESS = 0
_NAME_BUFFER = 96
_SMI_TIMEOUT = 20.0


class GpuSelectionError(ValueError):
    """``--gpus`` names GPUs that are not there, or is malformed."""


@dataclass(frozen=True)
class Gpu:
    index: str
    uuid: str = ""
    name: str = ""

    def __str__(self) -> str:
        return f"GPU {self.index} ({self.name})" if self.name else f"GPU {self.index}"


def discover_gpus() -> list[Gpu]:
    """Every GPU NVML or ``nvidia-smi`` reports; empty when neither is there or both fail."""
    found = _from_nvml()
    return found if found is not None else _from_nvidia_smi()


def _from_nvml() -> list[Gpu] | None:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != _NVML_SUCCESS:
            return None
        try:
            count = ctypes.c_uint()
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != _NVML_SUCCESS:
                return None
            gpus = []
            for i in range(count.value):
                handle = ctypes.c_void_p()
                if nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != _NVML_SUCCESS:
                    continue
                name = ctypes.create_string_buffer(_NAME_BUFFER)
                uuid = ctypes.create_string_buffer(_NAME_BUFFER)
                nvml.nvmlDeviceGetName(handle, name, _NAME_BUFFER)
                nvml.nvmlDeviceGetUUID(handle, uuid, _NAME_BUFFER)
                gpus.append(
                    Gpu(str(i), uuid.value.decode(errors="replace"), name.value.decode(errors="replace"))
                )
            return gpus
        finally:
            nvml.nvmlShutdown()
    except AttributeError:  # a library without these entry points is not one we can use
        return None


def _from_nvidia_smi() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_SMI_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return parse_smi_csv(out.stdout)


def parse_smi_csv(text: str) -> list[Gpu]:
    """``0, GPU-abc..., NVIDIA A100-SXM4-40GB`` lines into GPUs (a name may hold commas)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(Gpu(parts[0], parts[1], parts[2]))
    return gpus


def select_gpus(choice: str, available: list[Gpu] | None = None) -> list[Gpu]:
    """The GPUs ``--gpus`` names: ``all`` or a comma-separated list of indices (``0,2``).

    An explicit list is taken as given when discovery finds nothing (a container may hide
    NVML yet still have the devices); when discovery works, each index must exist.
    """
    choice = choice.strip()
    found = discover_gpus() if available is None else available
    if choice.lower() == "all":
        if not found:
            raise GpuSelectionError(
                "--gpus all: no NVIDIA GPU found (neither NVML nor nvidia-smi reports one); "
                "use --slots N to run N trials at once without GPUs"
            )
        return list(found)
    wanted = [part.strip() for part in choice.split(",") if part.strip()]
    if not wanted or not all(w.isdigit() for w in wanted):
        raise GpuSelectionError(f"--gpus takes 'all' or GPU indices like 0,1,3; got {choice!r}")
    if len(set(wanted)) != len(wanted):
        raise GpuSelectionError(f"--gpus names a GPU twice: {choice!r}")
    if not found:
        return [Gpu(w) for w in wanted]
    by_index = {g.index: g for g in found}
    missing = [w for w in wanted if w not in by_index]
    if missing:
        have = ", ".join(g.index for g in found)
        raise GpuSelectionError(
            f"--gpus {choice}: no GPU with index {', '.join(missing)} (this machine has {have})"
        )
    return [by_index[w] for w in wanted]
