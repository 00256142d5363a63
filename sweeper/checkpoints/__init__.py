"""Where population-based training keeps checkpoints, and how a trial's folder gets there and back.

A checkpoint is a folder. Each trial of a ``method: pbt`` sweep publishes its ``run.checkpoint_dir``
to ``<root>/<sweep id>/<trial number>``, where ``root`` is ``sweeper.pbt.checkpoints``:

- a folder, relative to the agent's working folder (shared between machines by a network file
  system), or a ``file://`` URL: standard library only;
- any URL that ``fsspec`` knows (``s3://``, ``gs://``, ``memory://`` ...), with fsspec installed;
- ``mlflow-artifacts://host:port/path``: the artifact store of an ``mlflow server``, with mlflow
  installed (``checkpoints: mlflow`` in a sweep file points there from ``integrations.mlflow``).

A reader never sees a checkpoint half-published: a folder is renamed into place, and a remote
store gets a new version folder first and then the one small file that names it (see ``remote``).
Standard library only at import time, so the agent stays light.
"""

from __future__ import annotations

from pathlib import Path

from sweeper.checkpoints.local import (
    SNAPSHOTS_FOLDER,
    CheckpointError,
    fetch_folder,
    newest_snapshot,
    publish_folder,
    remove_folder,
    signature,
    take_snapshot,
)

__all__ = [
    "SNAPSHOTS_FOLDER",
    "CheckpointError",
    "checkpoint_location",
    "fetch",
    "is_url",
    "newest_snapshot",
    "publish",
    "remove",
    "signature",
    "take_snapshot",
]

MLFLOW_SCHEME = "mlflow-artifacts:"


def checkpoint_location(root: str, sweep_id: str, trial_number: int) -> str:
    """Where trial ``trial_number`` of ``sweep_id`` publishes its checkpoint folder."""
    return f"{root.rstrip('/')}/{sweep_id}/{int(trial_number)}"


def is_url(location: str) -> bool:
    """True for a location in a remote store; plain paths and ``file://`` URLs are folders."""
    if location.startswith(MLFLOW_SCHEME):
        return True
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme != "file"


def publish(folder: Path, location: str, *, base: Path) -> bool:
    """Copy the contents of ``folder`` to ``location``, replacing what was there. False when the
    folder is empty or missing (nothing is published). Readers see the old or the new, whole."""
    if not signature(folder):
        return False
    if not is_url(location):
        return publish_folder(folder, location, base=base)
    from sweeper.checkpoints.remote import publish_remote

    return publish_remote(folder, location)


def fetch(location: str, folder: Path, *, base: Path) -> bool:
    """Copy the checkpoint at ``location`` into ``folder`` (emptied first). False when there is none."""
    if not is_url(location):
        return fetch_folder(location, folder, base=base)
    from sweeper.checkpoints.remote import fetch_remote

    return fetch_remote(location, folder)


def remove(location: str, *, base: Path) -> None:
    """Remove the checkpoint at ``location``, if there is one."""
    if not is_url(location):
        remove_folder(location, base=base)
        return
    from sweeper.checkpoints.remote import remove_remote

    remove_remote(location)
