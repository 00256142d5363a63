"""Checkpoint folders on this machine: snapshots in a trial's folder, and a shared folder store.

Standard library only.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

#: In a trial's folder: whole copies of ``run.checkpoint_dir``, one per ``log`` call that followed a save.
SNAPSHOTS_FOLDER = "checkpoint-snapshots"

# A reader may find a local checkpoint between the two renames of a publish, or copy one that a
# publish moves aside and removes under it: it asks again.
_FETCH_TRIES = 10
_FETCH_PAUSE = 0.05


class CheckpointError(Exception):
    """A checkpoint could not be published or fetched; the message says what to check."""


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


def _local(location: str, base: Path) -> Path:
    if location.startswith("file://"):
        location = location[len("file://") :]
    path = Path(location).expanduser()
    return path if path.is_absolute() else base / path


def publish_folder(folder: Path, location: str, *, base: Path) -> bool:
    """Copy ``folder`` to the folder ``location`` (relative to ``base``); it appears all at once."""
    try:
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
    except Exception as exc:
        raise CheckpointError(f"cannot publish the checkpoint to {location}: {exc}") from exc


def fetch_folder(location: str, folder: Path, *, base: Path) -> bool:
    """Copy the folder ``location`` into ``folder`` (emptied first). False when there is none."""
    if folder.exists():
        shutil.rmtree(folder)
    source = _local(location, base)
    try:
        for attempt in range(_FETCH_TRIES):
            try:
                before = source.stat().st_ino
                shutil.copytree(source, folder)
                if source.stat().st_ino == before:  # else a publish renamed a new folder in mid-copy
                    return True
                raise FileNotFoundError(source)
            except (FileNotFoundError, shutil.Error):  # shutil.Error: files vanished mid-copy
                shutil.rmtree(folder, ignore_errors=True)
                if attempt == _FETCH_TRIES - 1 or not source.parent.exists():
                    return False
                time.sleep(_FETCH_PAUSE)
        return False
    except Exception as exc:
        raise CheckpointError(f"cannot fetch the checkpoint at {location}: {exc}") from exc


def remove_folder(location: str, *, base: Path) -> None:
    """Remove the checkpoint folder ``location``, renamed aside first so that a reader finds it
    whole or not at all. Nothing to do when it is not there."""
    target = _local(location, base)
    try:
        os.replace(target, target.with_name(f".{target.name}.removed-{uuid.uuid4().hex[:8]}"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CheckpointError(f"cannot remove the checkpoint at {location}: {exc}") from exc
    # This removal's folder, and any that a removal cut short (its agent exited) left behind.
    for doomed in target.parent.glob(f".{target.name}.removed-*"):
        shutil.rmtree(doomed, ignore_errors=True)
