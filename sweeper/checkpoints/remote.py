"""Checkpoints in a remote store: any fsspec URL, or the artifact store of an ``mlflow server``.

Object stores cannot rename a folder, so each publish writes a new version and then the one small
file that names it::

    <location>/versions/<version>/...   the checkpoint folder, whole
    <location>/LATEST                   the name of the newest whole version

A reader reads ``LATEST`` and then that version, so it never sees a half-uploaded checkpoint. The
version before the newest is kept for readers still downloading it; older ones are removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from sweeper.checkpoints.local import CheckpointError
from sweeper.redact import redact_urls

LATEST = "LATEST"
VERSIONS = "versions"
# A version can be removed between reading LATEST and downloading it (two publishes in between).
_FETCH_TRIES = 3


class RemoteStore(Protocol):
    """The few operations the versioned layout needs; paths are relative to the location."""

    def put_folder(self, local: Path, path: str) -> None: ...

    def get_folder(self, path: str, local: Path) -> None: ...

    def read_text(self, path: str) -> str | None: ...  # None when there is no such file

    def write_text(self, path: str, text: str) -> None: ...

    def list_names(self, path: str) -> list[str]: ...  # the names directly under path; [] if none

    def remove(self, path: str) -> None: ...


def publish_remote(folder: Path, location: str) -> bool:
    try:
        store = store_for(location)
        previous = store.read_text(LATEST)
        version = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        store.put_folder(folder, f"{VERSIONS}/{version}")
        store.write_text(LATEST, version)
        for name in store.list_names(VERSIONS):
            if name not in (version, previous):
                store.remove(f"{VERSIONS}/{name}")
        return True
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot publish the checkpoint to {location}: {exc}") from exc


def fetch_remote(location: str, folder: Path) -> bool:
    if folder.exists():
        shutil.rmtree(folder)
    try:
        store = store_for(location)
        for attempt in range(_FETCH_TRIES):
            version = store.read_text(LATEST)
            if version is None:
                return False
            folder.mkdir(parents=True)
            try:
                store.get_folder(f"{VERSIONS}/{version.strip()}", folder)
                return True
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                if attempt == _FETCH_TRIES - 1 or store.read_text(LATEST) == version:
                    raise
        return False
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot fetch the checkpoint at {location}: {exc}") from exc


def remove_remote(location: str) -> None:
    """Remove the checkpoint at ``location``: its ``LATEST`` first, so that a reader finds none
    rather than a version half removed. Nothing to do when there is none."""
    try:
        store = store_for(location)
        names = store.list_names("")
        for name in (LATEST, VERSIONS):  # in this order
            if name in names:
                store.remove(name)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot remove the checkpoint at {location}: {exc}") from exc


def store_for(location: str) -> RemoteStore:
    """The store rooted at ``location``."""
    if location.startswith("mlflow-artifacts:"):
        return MlflowArtifactStore(location)
    return FsspecStore(location)


class FsspecStore:
    def __init__(self, location: str) -> None:
        try:
            import fsspec
        except ImportError:
            raise CheckpointError(
                f"checkpoint location {location!r} is a URL: install fsspec "
                "(pip install 'sweeper[checkpoints]') and the package for its scheme, or use a folder"
            ) from None
        self.fs, root = fsspec.core.url_to_fs(location)
        self.root = root.rstrip("/")

    def _at(self, path: str) -> str:
        return f"{self.root}/{path}"

    def put_folder(self, local: Path, path: str) -> None:
        self.fs.put(os.fspath(local).rstrip("/") + "/", self._at(path), recursive=True)

    def get_folder(self, path: str, local: Path) -> None:
        if not self.fs.exists(self._at(path)):
            raise FileNotFoundError(self._at(path))
        self.fs.get(self._at(path) + "/", os.fspath(local).rstrip("/") + "/", recursive=True)

    def read_text(self, path: str) -> str | None:
        try:
            return self.fs.cat_file(self._at(path)).decode()
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str) -> None:
        self.fs.pipe_file(self._at(path), text.encode())

    def list_names(self, path: str) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._at(path), detail=False)]
        except FileNotFoundError:
            return []

    def remove(self, path: str) -> None:
        self.fs.rm(self._at(path), recursive=True)


class MlflowArtifactStore:
    """``mlflow-artifacts://host:port/path`` (or ``mlflow-artifacts:/path``, on the server named by
    ``MLFLOW_TRACKING_URI``): a server started by ``mlflow server``, which serves artifacts."""

    def __init__(self, location: str) -> None:
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        except ImportError:
            raise CheckpointError(
                f"checkpoint location {location!r} is in MLflow's artifact store: "
                "install mlflow (pip install 'sweeper[mlflow]')"
            ) from None
        # An agent's log is no place for download progress bars; a user's own setting wins.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # A location that names its server is read there, whatever MLFLOW_TRACKING_URI says.
        host = location[len("mlflow-artifacts:") :]
        server = None
        if host.startswith("//"):
            netloc = host[2:].split("/", 1)[0]
            scheme = "https" if netloc.endswith(":443") else "http"
            server = f"{scheme}://{netloc}"
        _check_answers(server or os.environ.get("MLFLOW_TRACKING_URI", ""))
        self.repo: Any = get_artifact_repository(location.rstrip("/"), tracking_uri=server)

    def put_folder(self, local: Path, path: str) -> None:
        self.repo.log_artifacts(os.fspath(local), artifact_path=path)

    def get_folder(self, path: str, local: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            downloaded = Path(self.repo.download_artifacts(path, dst_path=scratch))
            for item in downloaded.iterdir():
                shutil.move(os.fspath(item), os.fspath(local / item.name))

    def read_text(self, path: str) -> str | None:
        parent, _, name = path.rpartition("/")
        if name not in self.list_names(parent):
            return None
        with tempfile.TemporaryDirectory() as scratch:
            return Path(self.repo.download_artifacts(path, dst_path=scratch)).read_text()

    def write_text(self, path: str, text: str) -> None:
        parent, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory() as scratch:
            file = Path(scratch) / name
            file.write_text(text)
            self.repo.log_artifact(os.fspath(file), artifact_path=parent or None)

    def list_names(self, path: str) -> list[str]:
        return [info.path.rstrip("/").rsplit("/", 1)[-1] for info in self.repo.list_artifacts(path or None)]

    def remove(self, path: str) -> None:
        self.repo.delete_artifacts(path)


_PROBE_SECONDS = 5.0


def _check_answers(server: str) -> None:
    """Raise ConnectionError unless the MLflow server at ``server`` (an http(s) URL; anything else
    is not checked) answers within seconds, whatever it answers (an error status is an answer).
    MLflow's own retries would hold each call of a server that is down for minutes, and with it
    the end of every trial. MLflow's client makes the call, with the URI's credentials and the
    TLS settings of MLFLOW_TRACKING_* variables."""
    if not server.startswith(("http://", "https://")):
        return
    try:  # MLflow's helpers, as its clients call them; an MLflow without them is not checked
        from mlflow.tracking._tracking_service.utils import get_default_host_creds
        from mlflow.utils.rest_utils import http_request
    except ImportError:
        return
    try:
        http_request(
            get_default_host_creds(server),
            "/health",
            "GET",
            max_retries=0,
            timeout=_PROBE_SECONDS,
            raise_on_status=False,
        )
    except Exception as exc:  # refused, timed out, a certificate it does not trust
        raise ConnectionError(redact_urls(f"the MLflow server {server} does not answer ({exc})")) from None
