"""Finding the NVIDIA GPUs an agent may use, so it can run one trial per GPU.

First through NVML (``libnvidia-ml.so.1`` via ctypes, no Python package needed), then through
``nvidia-smi``. Each GPU is named by its index, in the PCI bus order both use, and a trial on it
gets that index in ``CUDA_VISIBLE_DEVICES`` (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so CUDA counts
the same way: see :func:`sweeper.agents.trialdir.trial_env`).

An agent started with ``CUDA_VISIBLE_DEVICES`` already set (by a scheduler such as Slurm, or by
hand) uses only those GPUs, as CUDA would: ``--gpus all`` means each of its entries, ``--gpus 0,1``
the first two, and each trial gets one entry as it was written (an index or a ``GPU-``/``MIG-``
UUID). NVML lists every GPU of the machine whatever that variable says, so without this an agent
in a job given two GPUs of eight would run trials on all eight.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

_NVML_SUCCESS = 0
_NAME_BUFFER = 96
_SMI_TIMEOUT = 20.0  # for nvidia-smi, and for NVML: a driver in a bad state can hang either


class GpuSelectionError(ValueError):
    """``--gpus`` names GPUs that are not there, or is malformed."""


@dataclass(frozen=True)
class Gpu:
    index: str
    uuid: str = ""
    name: str = ""

    def __str__(self) -> str:
        label = self.index if self.index.startswith(_UUID_PREFIXES) else f"GPU {self.index}"
        return f"{label} ({self.name})" if self.name else label


_UUID_PREFIXES = ("GPU-", "MIG-")


def inherited_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` as CUDA reads them; None when it is not set.

    CUDA stops at the first entry that is neither an index nor a UUID, so ``""``, ``-1`` and the
    ``NoDevFiles`` some schedulers set all leave no GPU visible."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries: list[str] = []
    for part in value.split(","):
        entry = part.strip()
        if not (_is_index(entry) or entry.startswith(_UUID_PREFIXES)):
            break
        entries.append(entry)
    return entries


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes "²"


def discover_gpus(problems: list[str] | None = None) -> list[Gpu]:
    """Every GPU NVML or ``nvidia-smi`` reports; empty when neither is there or both fail, and
    then what went wrong, if anything did, is added to ``problems``."""
    problems = [] if problems is None else problems
    found = _from_nvml_in_time(problems)
    return found if found is not None else _from_nvidia_smi(problems)


def _from_nvml_in_time(problems: list[str]) -> list[Gpu] | None:
    """:func:`_from_nvml` in a thread of its own, given up on after ``_SMI_TIMEOUT`` seconds."""
    result: list[list[Gpu] | None | Exception] = []

    def ask() -> None:
        try:
            result.append(_from_nvml())
        except Exception as exc:  # a driver library that fails in a way of its own: try nvidia-smi
            result.append(exc)

    worker = threading.Thread(target=ask, name="nvml", daemon=True)
    worker.start()
    worker.join(_SMI_TIMEOUT)
    if not result:
        problems.append(f"NVML did not answer within {_SMI_TIMEOUT:g} s")
        return None
    if isinstance(found := result[0], Exception):
        problems.append(f"NVML failed: {found}")
        return None
    return found


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


def _from_nvidia_smi(problems: list[str]) -> list[Gpu]:
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
    except subprocess.TimeoutExpired:
        problems.append(f"nvidia-smi did not answer within {_SMI_TIMEOUT:g} s")
        return []
    except OSError as exc:
        problems.append(f"nvidia-smi could not run: {exc}")
        return []
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
        problems.append(f"nvidia-smi exited with status {out.returncode}: {said[0]}")
        return []
    return parse_smi_csv(out.stdout)


def parse_smi_csv(text: str) -> list[Gpu]:
    """``0, GPU-abc..., NVIDIA A100-SXM4-40GB`` lines into GPUs (a name may hold commas)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and _is_index(parts[0]):
            gpus.append(Gpu(parts[0], parts[1], parts[2]))
    return gpus


def select_gpus(
    choice: str,
    available: list[Gpu] | None = None,
    environ: Mapping[str, str] | None = None,
    without_gpus: str = "--slots",
) -> list[Gpu]:
    """The GPUs ``--gpus`` names: ``all`` or a comma-separated list of indices (``0,2``).

    Within an inherited ``CUDA_VISIBLE_DEVICES`` (``environ``, by default this process's), the
    indices count its entries, as CUDA does. Otherwise an explicit list is taken as given when
    discovery finds nothing (a container may hide NVML yet still have the devices); when
    discovery works, each index must exist. Messages suggest ``without_gpus`` (the command's
    option for trials without GPUs) where there are none to use.
    """
    choice = choice.strip()
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    found = discover_gpus(problems) if available is None else available
    inherited = inherited_devices(environ)
    why = "; ".join(problems) or "neither NVML nor nvidia-smi reports one"  # when none is found
    if inherited is not None:
        chosen = _select_visible(choice, inherited, found, environ, without_gpus)
        if not found:
            log.warning(
                "--gpus %s: no NVIDIA GPU found (%s); taking CUDA_VISIBLE_DEVICES=%r as given, as a "
                "container may hide NVML",
                choice,
                why,
                environ["CUDA_VISIBLE_DEVICES"],
            )
        return chosen
    if choice.lower() == "all":
        if not found:
            raise GpuSelectionError(
                f"--gpus all: no NVIDIA GPU found ({why}); "
                f"use {without_gpus} N to run N trials at once without GPUs"
            )
        return list(found)
    wanted = _indices(choice)
    if not found:
        log.warning(
            "--gpus %s: no NVIDIA GPU found (%s); taking the indices as given, as a container may hide "
            "NVML: each trial gets CUDA_VISIBLE_DEVICES set to one of them",
            choice,
            why,
        )
        return [Gpu(w) for w in wanted]
    by_index = {g.index: g for g in found}
    missing = [w for w in wanted if w not in by_index]
    if missing:
        have = ", ".join(g.index for g in found)
        raise GpuSelectionError(
            f"--gpus {choice}: no GPU with index {', '.join(missing)} (this machine has {have})"
        )
    return [by_index[w] for w in wanted]


def gpu_groups(chosen: list[Gpu], per_trial: int) -> tuple[list[list[Gpu]], list[Gpu]]:
    """``chosen`` in groups of ``per_trial`` GPUs, one group per trial (a data-parallel job:
    ``torchrun --nproc-per-node=gpu``), in the order given, so that neighbours, which usually
    share the fastest links, train together; and the GPUs left over, fewer than a group."""
    if per_trial < 1:
        raise ValueError(f"a trial needs at least one GPU, not {per_trial}")
    if per_trial > 1 and (mig := [g for g in chosen if g.index.startswith("MIG-")]):
        raise GpuSelectionError(
            f"--gpus-per-trial {per_trial}: {mig[0]} is a MIG instance, and CUDA shows a process one "
            "MIG instance only; give each trial one (--gpus-per-trial 1)"
        )
    if len(chosen) < per_trial:
        have = ", ".join(str(g) for g in chosen) or "none"
        raise GpuSelectionError(
            f"--gpus-per-trial {per_trial}: only {len(chosen)} GPU(s) to use here ({have})"
        )
    whole = len(chosen) - len(chosen) % per_trial
    groups = [chosen[at : at + per_trial] for at in range(0, whole, per_trial)]
    return groups, chosen[whole:]


def visible_devices(group: list[Gpu]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a trial on ``group``."""
    return ",".join(g.index for g in group)


def described_devices(entry: str) -> str:
    """A trial slot's ``CUDA_VISIBLE_DEVICES`` for people: ``GPU 3``, ``GPUs 0,1``."""
    return f"GPUs {entry}" if "," in entry else f"GPU {entry}"


def _indices(choice: str) -> list[str]:
    wanted = [part.strip() for part in choice.split(",")]
    if not all(_is_index(w) for w in wanted):
        empty = " (an empty entry)" if "" in wanted and choice else ""  # 0,,1: a typo, not "0,1"
        raise GpuSelectionError(f"--gpus takes 'all' or GPU indices like 0,1,3; got {choice!r}{empty}")
    if len(set(wanted)) != len(wanted):
        raise GpuSelectionError(f"--gpus names a GPU twice: {choice!r}")
    return wanted


def _select_visible(
    choice: str, entries: list[str], found: list[Gpu], environ: Mapping[str, str], without_gpus: str
) -> list[Gpu]:
    """``--gpus`` within the entries of an inherited ``CUDA_VISIBLE_DEVICES``."""
    shown = f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r}"
    if not entries:
        raise GpuSelectionError(
            f"--gpus {choice}: {shown} leaves this agent no GPU; unset it to use every GPU of the "
            f"machine, or use {without_gpus} N to run N trials at once without GPUs"
        )
    if len(set(entries)) != len(entries):  # two trials at once would share one GPU
        raise GpuSelectionError(f"{shown} names a GPU twice; list each GPU this agent may use once")
    visible = [_described(entry, found, environ) for entry in entries]
    if choice.lower() == "all":
        return visible
    wanted = _indices(choice)
    beyond = [w for w in wanted if int(w) >= len(visible)]
    if beyond:
        raise GpuSelectionError(
            f"--gpus {choice}: {shown} makes {len(visible)} GPU(s) visible here, numbered 0 to "
            f"{len(visible) - 1} as CUDA numbers them; no GPU {', '.join(beyond)}"
        )
    return [visible[int(w)] for w in wanted]


def _described(entry: str, found: list[Gpu], environ: Mapping[str, str]) -> Gpu:
    """An inherited entry, with the name discovery gives it where it is sure which GPU it is: a
    UUID (or a unique prefix of one, as CUDA accepts), or an index in PCI bus order."""
    if entry.startswith(_UUID_PREFIXES):
        matches = [g for g in found if g.uuid.startswith(entry)]
    elif environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        matches = [g for g in found if g.index == entry]
    else:  # CUDA counts fastest first by default, which NVML's order need not be
        matches = []
    if len(matches) == 1:
        return Gpu(entry, matches[0].uuid, matches[0].name)
    return Gpu(entry)
