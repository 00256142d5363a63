"""The ``integrations:`` block of a sweep file: which trackers log the sweep, and where.

::

    integrations:
      mlflow: {tracking_uri: http://mlflow:5000, experiment: digits}   # or mlflow: true
      wandb: {project: digits, entity: my-team, mode: offline}        # or wandb: true

A missing value falls back to the tracker's own environment variables where the agent runs
(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE, WANDB_DIR).
``wandb.dir`` is the folder W&B writes its runs under (``<dir>/wandb``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from sweeper.redact import redact_urls
from sweeper.spec.fields import boolean, choice, show, string
from sweeper.spec.problems import Problem, join, unknown_key

TRACKER_KEYS: dict[str, tuple[str, ...]] = {
    "mlflow": ("tracking_uri", "experiment", "enabled"),
    "wandb": ("project", "entity", "mode", "tags", "dir", "enabled"),
}
WANDB_MODES = ("online", "offline", "disabled")


def check_integrations(raw: Any, problems: list[Problem], path: str = "integrations") -> None:
    """Record a Problem, with its key path, for everything wrong in an ``integrations`` block."""
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, f"expected a mapping such as {{mlflow: true}}, got {show(raw)}"))
        return
    for tracker, settings in raw.items():
        where = join(path, str(tracker))
        if tracker not in TRACKER_KEYS:
            problems.append(Problem(where, unknown_key(str(tracker), TRACKER_KEYS)))
            continue
        if isinstance(settings, bool) or settings is None:
            continue  # `mlflow: true` (or empty): every setting from the environment
        if not isinstance(settings, Mapping):
            problems.append(
                Problem(where, f"expected true, false or a mapping of settings, got {show(settings)}")
            )
            continue
        for key, value in settings.items():
            at = join(where, str(key))
            if key not in TRACKER_KEYS[tracker]:
                problems.append(Problem(at, unknown_key(str(key), TRACKER_KEYS[tracker])))
            elif key == "enabled":
                boolean(value, at, problems)
            elif key == "mode":
                choice(value, WANDB_MODES, at, problems)
            elif key == "tags":
                _tags(value, at, problems)
            elif string(value, at, problems) is value and not value.strip():
                problems.append(Problem(at, "expected a non-empty string"))


# "127.0.0.1:5000", "localhost:5000/", "[::1]:5000": a server's address without "http://", which
# MLflow would take for a folder of that name.
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):\d{1,5}(?:/.*)?")


def tracking_uri_problem(raw: Any) -> Problem | None:
    """A mistyped ``integrations.mlflow.tracking_uri`` in a sweep's unchecked mapping. Asked of a
    sweep as it is made, not of stored sweeps, which are read as they were made."""
    block = raw.get("integrations") if isinstance(raw, Mapping) else None
    mlflow = block.get("mlflow") if isinstance(block, Mapping) else None
    uri = mlflow.get("tracking_uri") if isinstance(mlflow, Mapping) else None
    wrong = mlflow_uri_problem(uri) if isinstance(uri, str) else None
    return Problem("integrations.mlflow.tracking_uri", wrong) if wrong else None


def mlflow_uri_problem(uri: str) -> str | None:
    """What is wrong with an MLflow tracking URI that is plainly mistyped; None for the rest
    (a folder, ``sqlite:///mlflow.db``, ``http(s)://host:port``, a database, a plugin's scheme).
    The URI meant is shown, its password and secrets hidden; the one typed is not echoed."""
    uri = uri.strip()
    if _HOST_PORT.fullmatch(uri):
        return f"expected a URI such as http://{uri.split('/')[0]}: without a scheme it names a local folder"
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.lower()
    if not colon or len(scheme) < 2:  # a path (a single letter: a Windows drive)
        return None
    if scheme in ("http", "https") and not re.match(r"//[^/]", rest):
        meant = redact_urls(f"{scheme}://{rest.lstrip('/')}", keep_user=False)
        return f"expected {scheme}://host:port, such as {meant}"
    near = difflib.get_close_matches(scheme, ("http", "https"), n=1, cutoff=0.75)
    if near and scheme not in ("http", "https") and rest.startswith("//"):
        meant = redact_urls(f"{near[0]}:{rest}", keep_user=False)
        return f"expected {meant}: no tracking store has the scheme {scheme!r}"
    return None


MLFLOW_CHECKPOINTS = "mlflow"
MLFLOW_CHECKPOINT_FOLDER = "sweeper-checkpoints"


def mlflow_checkpoint_root(raw: Any, problems: list[Problem]) -> str | None:
    """``sweeper.pbt.checkpoints: mlflow``: the artifact store of the sweep's MLflow server.

    With ``integrations.mlflow.tracking_uri`` set, that server (it must be ``http(s)://``: only an
    ``mlflow server`` stores artifacts for others); without it, the server that the agents'
    ``MLFLOW_TRACKING_URI`` names.
    """
    path = "sweeper.pbt.checkpoints"
    block = raw.get("mlflow") if isinstance(raw, Mapping) else None
    if block is None or block is False or (isinstance(block, Mapping) and block.get("enabled") is False):
        problems.append(
            Problem(
                path,
                "mlflow keeps checkpoints in the artifact store of the sweep's MLflow server; "
                "add integrations: {mlflow: {tracking_uri: http://host:port}}, or run it with "
                "sweeper run --mlflow http://host:port",
            )
        )
        return None
    uri = block.get("tracking_uri") if isinstance(block, Mapping) else None
    if not isinstance(uri, str):
        return f"mlflow-artifacts:/{MLFLOW_CHECKPOINT_FOLDER}"
    scheme, sep, rest = uri.partition("://")
    netloc = rest.split("/", 1)[0]
    if scheme not in ("http", "https") or not sep or not netloc:
        problems.append(
            Problem(
                path,
                "mlflow keeps checkpoints in an mlflow server's artifact store, so "
                f"integrations.mlflow.tracking_uri must be http(s)://host:port, got {show(uri)}",
            )
        )
        return None
    return f"mlflow-artifacts://{netloc}/{MLFLOW_CHECKPOINT_FOLDER}"


def _tags(value: Any, path: str, problems: list[Problem]) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(Problem(path, f"expected a list of non-empty strings, got {show(value)}"))


def tracker_settings(spec: Any) -> Any:
    """The sweep's ``integrations`` block, its ``wandb`` settings taking the sweep file's own W&B
    keys (top-level ``project`` and ``entity``) where they name none, as W&B itself would log there."""
    raw = spec.raw.get("integrations")
    if not isinstance(raw, Mapping) or raw.get("wandb", False) is False:
        return raw  # no W&B (a disabled block stays disabled whatever keys it gets)
    settings = dict(raw["wandb"]) if isinstance(raw["wandb"], Mapping) else {}
    for key in ("project", "entity"):
        if getattr(spec, key):
            settings.setdefault(key, getattr(spec, key))
    return {**raw, "wandb": settings}


def enabled_trackers(raw: Any) -> dict[str, dict[str, Any]]:
    """``{tracker: settings}`` for each tracker switched on in a checked block."""
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(raw, Mapping):
        return out
    for tracker, settings in raw.items():
        if settings is False or tracker not in TRACKER_KEYS:
            continue
        settings = dict(settings) if isinstance(settings, Mapping) else {}
        if settings.pop("enabled", True):
            out[str(tracker)] = settings
    return out
