"""A trial's folder on the agent's machine, and the environment its command runs in."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweeper._context import run_id_for
from sweeper.files import write_atomic
from sweeper.protocol import Assignment

# Variables the agent itself may hold that a training script has no business seeing.
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD")


@dataclass(frozen=True)
class TrialDir:
    """``<workdir>/.sweeper/trials/<sweep_id>/<trial_number>/`` and the files in it."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def wandb_config_path(self) -> Path:
        return self.path / "wandb-config.yaml"

    @property
    def args_json_path(self) -> Path:
        return self.path / "args.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def artifacts_path(self) -> Path:
        """One JSON line per file the script marked with ``run.log_artifact``."""
        return self.path / "artifacts.jsonl"

    @property
    def stdout_path(self) -> Path:
        return self.path / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.path / "stderr.log"

    def marked_artifacts(self) -> tuple[Path, ...]:
        """The files the script marked with ``run.log_artifact``, in order, once each, if still there."""
        seen: dict[str, None] = {}
        try:
            lines = self.artifacts_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return ()
        for line in lines:
            try:
                path = json.loads(line)["path"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(path, str) and os.path.exists(path):
                seen[path] = None
        return tuple(Path(p) for p in seen)

    @classmethod
    def for_assignment(cls, workdir: Path, assignment: Assignment) -> TrialDir:
        sweep_folder = trials_root(workdir) / sweep_folder_name(assignment.sweep_id)
        return cls(sweep_folder / str(assignment.trial_number))

    @classmethod
    def create(cls, workdir: Path, assignment: Assignment) -> TrialDir:
        """Make the folder and write the trial's config files; empty logs left by an earlier attempt."""
        trial_dir = cls.for_assignment(workdir, assignment)
        trial_dir.path.mkdir(parents=True, exist_ok=True)
        config = plain(assignment.config)
        write_atomic(trial_dir.config_path, json.dumps(config, indent=2) + "\n")
        write_atomic(trial_dir.wandb_config_path, wandb_config_yaml(config))
        for log_path in (trial_dir.metrics_path, trial_dir.stdout_path, trial_dir.stderr_path):
            log_path.write_bytes(b"")
        return trial_dir


def plain(value: Any) -> Any:
    """Nested mappings and sequences as dicts and lists, so JSON and safe YAML accept them."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def wandb_config_yaml(config: Mapping[str, Any]) -> str:
    """The config in the form ``wandb agent`` writes for ``WANDB_SWEEP_PARAM_PATH``."""
    text = "wandb_version: 1"
    if config:  # W&B leaves the body out when empty: an empty mapping would not parse back
        body = {str(key): {"value": plain(value)} for key, value in config.items()}
        text += "\n\n" + yaml.safe_dump(body, default_flow_style=False, allow_unicode=True, sort_keys=False)
    return text


def trial_env(
    base: Mapping[str, str],
    assignment: Assignment,
    trial_dir: TrialDir,
    *,
    gpu: str | None = None,
) -> dict[str, str]:
    """The agent's environment, minus its secrets, plus what the trial needs to find its config."""
    env = {k: v for k, v in base.items() if not _is_secret(k) and k not in _AGENT_PROCESS_ONLY}
    env.update(
        {
            "SWEEPER_SWEEP_ID": assignment.sweep_id,
            "SWEEPER_TRIAL_ID": str(assignment.trial_id),
            "SWEEPER_TRIAL_NUMBER": str(assignment.trial_number),
            "SWEEPER_TRIAL_DIR": os.fspath(trial_dir.path),
            "SWEEPER_CONFIG_PATH": os.fspath(trial_dir.config_path),
            "SWEEPER_METRICS_PATH": os.fspath(trial_dir.metrics_path),
            "WANDB_SWEEP_ID": assignment.sweep_id,
            "WANDB_RUN_ID": run_id_for(assignment.sweep_id, assignment.trial_number),
            "WANDB_SWEEP_PARAM_PATH": os.fspath(trial_dir.wandb_config_path),
        }
    )
    # The sweep file's W&B project and entity, for a script's own wandb.init(): they win over the
    # agent's environment, as under `wandb agent`, and as they do for sweeper's own W&B runs.
    for name, value in (("WANDB_PROJECT", assignment.project), ("WANDB_ENTITY", assignment.entity)):
        if value:
            env[name] = value
    # W&B knows nothing of the sweep (the script's run names none): its runs are grouped by it
    # instead, as sweeper's own W&B runs are.
    env.setdefault("WANDB_RUN_GROUP", assignment.sweep_id)
    if gpu is not None:
        if "CUDA_VISIBLE_DEVICES" not in base:
            # The index is NVML's, in PCI bus order like nvidia-smi's; CUDA's own default order
            # (fastest first) can differ on a machine with mixed GPUs. An inherited entry is kept
            # as written, in whatever order its environment counts.
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


# Variables that belong to the agent's own process. WANDB_SERVICE names the wandb-core service of
# the agent's own W&B runs (--wandb): a script's run attached to it ended "finished, exit 0" when
# the agent shut the service down, however the script ended. `wandb agent` starts no service.
_AGENT_PROCESS_ONLY = frozenset({"WANDB_SERVICE"})


def _is_secret(name: str) -> bool:
    upper = name.upper()
    return upper.startswith("SWEEPER_") and any(marker in upper for marker in _SECRET_MARKERS)


def trials_root(workdir: Path) -> Path:
    """The folder the trials of every sweep run in, one folder per sweep."""
    return Path(workdir) / ".sweeper" / "trials"


def unwritable(workdir: Path) -> str | None:
    """Why trial folders cannot be made under ``workdir`` (a read-only file system, a folder of
    someone else's), found before any trial is taken; None when they can."""
    root = trials_root(workdir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".writable-", dir=root)  # one of its own per agent
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot make trial folders in {root}: {exc.strerror or exc}"
    return None


def sweep_folder_name(sweep_id: str) -> str:
    """A sweep's folder under :func:`trials_root`: its id as one folder name, whatever it contains."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", sweep_id) or "_"
