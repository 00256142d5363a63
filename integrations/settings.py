"""Tracker settings: the sweep file's ``integrations`` block first, then the trackers' own variables.

They are resolved when a sweep's trackers are built, and passed to the tracker explicitly: wandb
reads its variables once per process, so one process running two sweeps must not rely on them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.spec.integrations import enabled_trackers, mlflow_uri_problem

#: ``sweeper run --mlflow`` with no URI and no MLFLOW_TRACKING_URI: the file ``mlflow ui`` opens by default.
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "sweeper"
DEFAULT_WANDB_PROJECT = "sweeper"


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str
    experiment: str | None  # a name; None with experiment_id set
    experiment_id: str | None = None


@dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None
    mode: str | None  # None: wandb decides (WANDB_MODE, login state)
    tags: tuple[str, ...] = ()
    dir: str | None = None  # an absolute folder; None: the current one


# Tracking URIs that name a store, not a folder: ``databricks``, ``databricks://profile``, ``uc:...``.
_NAMED_STORES = ("databricks", "databricks-uc", "uc")


def absolute_uri(uri: str, base: Path | None = None) -> str:
    """A local store's path made absolute, so a trial running elsewhere (another cwd) finds it."""
    base = base or Path.cwd()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///") :]
        if rest and rest != ":memory:":
            return "sqlite:///" + os.fspath((base / rest).resolve())
    if uri.startswith("file:") or "://" in uri or uri.split(":", 1)[0] in _NAMED_STORES:
        return uri
    return (base / uri).resolve().as_uri()  # a bare folder such as ./mlruns


def mlflow_settings(block: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> MlflowSettings:
    env = os.environ if environ is None else environ
    uri = block.get("tracking_uri") or env.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI
    if not block.get("tracking_uri") and (wrong := mlflow_uri_problem(uri)):  # the sweep file's is checked
        raise ValueError(f"MLFLOW_TRACKING_URI: {wrong}")
    name = block.get("experiment") or env.get("MLFLOW_EXPERIMENT_NAME")
    experiment_id = None if name else env.get("MLFLOW_EXPERIMENT_ID")
    if not name and not experiment_id:
        name = DEFAULT_EXPERIMENT
    return MlflowSettings(tracking_uri=absolute_uri(uri), experiment=name, experiment_id=experiment_id)


def with_experiment_named(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A new sweep's mapping with its MLflow experiment named, when the sweep logs to MLflow and its
    file names none: this process's MLFLOW_EXPERIMENT_NAME, else sweeper's default. Stored with the
    sweep, so the server and every agent log into one experiment, under one sweep run, whatever
    their own environments say. (Given by id alone, MLFLOW_EXPERIMENT_ID, it stays each process's.)"""
    env = os.environ if environ is None else environ
    given = raw.get("integrations")
    block = given.get("mlflow") if isinstance(given, Mapping) else False
    # A well-formed block that switches MLflow on (`mlflow:` alone, or `true`, is on); a malformed
    # one is left for the file's own check to report.
    well_formed = block is None or block is True or isinstance(block, Mapping)
    if not well_formed or "mlflow" not in enabled_trackers(given):
        return raw
    if isinstance(block, Mapping) and block.get("experiment"):
        return raw
    name = env.get("MLFLOW_EXPERIMENT_NAME")
    if not name and env.get("MLFLOW_EXPERIMENT_ID"):
        return raw
    mlflow = {**(block if isinstance(block, Mapping) else {}), "experiment": name or DEFAULT_EXPERIMENT}
    return {**raw, "integrations": {**given, "mlflow": mlflow}}  # type: ignore[dict-item]


def wandb_settings(block: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> WandbSettings:
    env = os.environ if environ is None else environ
    return WandbSettings(
        project=block.get("project") or env.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
        entity=block.get("entity") or env.get("WANDB_ENTITY") or None,
        mode=block.get("mode") or env.get("WANDB_MODE") or None,
        tags=tuple(block.get("tags") or ()),
        dir=os.path.abspath(folder) if (folder := block.get("dir") or env.get("WANDB_DIR")) else None,
    )
