"""``sweeper run --mlflow [URI] --wandb``: the flags become the sweep's ``integrations`` block.

Stored with the sweep, the block reaches every agent in its assignments, so agents on other
machines log to the same trackers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import click
from sweeper.integrations.settings import DEFAULT_MLFLOW_URI, absolute_uri

#: ``--mlflow`` given without a URI: MLFLOW_TRACKING_URI, else ./mlflow.db.
FROM_ENV = "-"

mlflow_option = click.option(
    "--mlflow",
    "mlflow_uri",
    is_flag=False,
    flag_value=FROM_ENV,
    default=None,
    metavar="[URI]",
    help="Log to MLflow: a parent run per sweep, a child run per trial. "
    "URI default: each agent's MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder (what "
    "`mlflow ui` opens; stored with the sweep, so agents started later elsewhere log there too).",
)
wandb_option = click.option(
    "--wandb",
    "wandb_on",
    is_flag=True,
    default=False,
    help="Log to W&B: a run per trial grouped by sweep (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE apply).",
)


def with_trackers(raw: dict[str, Any], mlflow_uri: str | None, wandb_on: bool) -> dict[str, Any]:
    """A sweep file's mapping with the flags merged into its ``integrations`` block (flags win),
    before it is checked: what depends on the block (``checkpoints: mlflow``) sees the flags."""
    given = raw.get("integrations")
    if (mlflow_uri is None and not wandb_on) or not isinstance(given, Mapping | None):
        return raw  # a malformed block: the file's own check says so, with every other problem
    block: dict[str, Any] = dict(given or {})
    if mlflow_uri is not None:
        mlflow = _settings(block.get("mlflow"))
        mlflow.pop("enabled", None)
        if mlflow_uri != FROM_ENV:
            mlflow["tracking_uri"] = mlflow_uri
        elif "tracking_uri" not in mlflow and not os.environ.get("MLFLOW_TRACKING_URI"):
            # This folder's mlflow.db, made absolute and stored with the sweep: an agent started
            # later in another folder logs there too, not to an mlflow.db of its own. A tracking
            # URI from the environment is not stored (it may hold a password): agents read theirs.
            mlflow["tracking_uri"] = absolute_uri(DEFAULT_MLFLOW_URI)
        block["mlflow"] = mlflow
    if wandb_on:
        wandb = _settings(block.get("wandb"))
        wandb.pop("enabled", None)
        block["wandb"] = wandb  # the sweep file's own project and entity apply (tracker_settings)
    return {**raw, "integrations": block}  # checked with the rest of the file


def _settings(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}
