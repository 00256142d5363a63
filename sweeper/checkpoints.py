"""Where population-based training keeps checkpoints, and how a trial's folder gets there and back.

A checkpoint is a folder. Each trial of a ``method: pbt`` sweep publishes its ``run.checkpoint_dir``
to ``<root>/<sweep id>/<trial number>``, where ``root`` is ``sweeper.pbt.checkpoints``: a folder
(relative to the agent's working folder; shared between machines by a network file system) or,
when ``fsspec`` is installed, any URL it knows (``s3://``, ``gs://``, ``memory://`` ...).
``file://`` URLs and plain paths need nothing beyond the standard library.

Standard library only at import time, so the agent stays light.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "SNAPSHOTS_FOLDER",
    "CheckpointError",
    "checkpoint_location",
    "fetch",
    "is_url",
    "newest_snapshot",
    "publish",
    "take_snapshot",
]

#: In a trial's folder: whole copies of ``run.checkpoint_dir``, one per ``log`` call that followed a save.
SNAPSHOTS_FOLDER = "checkpoint-snapshots"

# A reader may find a local checkpoint between the two renames of a publish: it asks again.
_FETCH_TRIES = 5
_FETCH_PAUSE = 0.05


class CheckpointError(Exception):
    """A checkpoint could not be published or fetched; the message says what to check."""


def checkpoint_location(root: str, sweep_id: str, trial_number: int) -> str:
    """Where trial ``trial_number`` of ``sweep_id`` publishes its checkpoint folder."""
    return f"{root.rstrip('/')}/{sweep_id}/{int(trial_number)}"


def is_url(location: str) -> bool:
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme != "file"


def _local(location: str, base: Path) -> Path:
    if location.startswith("file://"):
        location = location[len("file://") :]
    path = Path(location).expanduser()
    return path if path.is_absolute() else base / path


def _filesystem(location: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        raise CheckpointError(
            f"checkpoint location {location!r} is a URL: install fsspec (pip install 'sweeper[checkpoints]') "
            "and the package for its scheme, or use a folder"
        ) from None
    fs, path = fsspec.core.url_to_fs(location)
    return fs, path.rstrip("/")


def signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when the folder's contents change: (relative path, size, mtime) of each file."""
    if not folder.is_dir():
        return ()
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            found.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def take_snapshot(folder: Path, snapshots: Path) -> Path | None:
    """Copy ``folder`` into a new, whole folder under ``snapshots`` (copied, then renamed into place).

    Called by the training process when it logs, so the copy holds what it saved before logging and
    never a file it is writing. The agent publishes the newest snapshot at its own pace. Copies keep
    modification times, so ``signature`` of a snapshot equals that of the folder it was taken from.
    None when the folder is empty.
    """
    if not signature(folder):
        return None
    snapshots.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}"
    staging = snapshots / f".{name}.tmp"
    shutil.copytree(folder, staging)
    final = snapshots / name
    os.replace(staging, final)
    return final


def newest_snapshot(snapshots: Path) -> Path | None:
    """The latest whole snapshot under ``snapshots``, or None."""
    try:
        names = [p.name for p in snapshots.iterdir() if not p.name.startswith(".")]
    except FileNotFoundError:
        return None
    return snapshots / max(names) if names else None


def publish(folder: Path, location: str, *, base: Path) -> bool:
    """Copy the contents of ``folder`` to ``location``, replacing what was there. False when the
    folder is empty or missing (nothing is published). Local copies appear all at once."""
    if not signature(folder):
        return False
    try:
        if is_url(location):
            fs, path = _filesystem(location)
            staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            fs.put(os.fspath(folder).rstrip("/") + "/", staging, recursive=True)
            if fs.exists(path):
                fs.rm(path, recursive=True)
            fs.mv(staging, path, recursive=True)
            return True
        target = _local(location, base)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        shutil.copytree(folder, staging)
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        return True
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot publish the checkpoint to {location}: {exc}") from exc


def fetch(location: str, folder: Path, *, base: Path) -> bool:
    """Copy the checkpoint at ``location`` into ``folder`` (emptied first). False when there is none."""
    if folder.exists():
        shutil.rmtree(folder)
    try:
        if is_url(location):
            fs, path = _filesystem(location)
            if not fs.exists(path):
                return False
            folder.mkdir(parents=True)
            fs.get(path.rstrip("/") + "/", os.fspath(folder).rstrip("/") + "/", recursive=True)
            return True
        source = _local(location, base)
        for attempt in range(_FETCH_TRIES):
            try:
                shutil.copytree(source, folder)
                return True
            except FileNotFoundError:
                shutil.rmtree(folder, ignore_errors=True)
                if attempt == _FETCH_TRIES - 1 or not source.parent.exists():
                    return False
                time.sleep(_FETCH_PAUSE)
        return False
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot fetch the checkpoint at {location}: {exc}") from exc
