"""Params a script logs into the trial's MLflow run, which the agent made and logged the sweep's
configuration into before the script started.

MLflow refuses to log a param again with another value, comparing strings: the sweep's ``C: 1``
is logged as ``"1"``, and a script that reads it with ``argparse type=float`` and logs
``mlflow.log_params(vars(args))`` or runs ``autolog()`` sends ``"1.0"``, so the whole call failed
(and with it the trial, or autolog's other params). A param the agent already logged is therefore
left out of the script's calls to that run: silently when it says the same (``1`` and ``1.0``,
``True`` and ``true``), with one line on stderr when it does not (the run keeps the sweep's value).
Standard library only, like the rest of the capture.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any

_BAD_KEY = re.compile(r"[^\w\-. /]")  # as the agent's MLflow adapter writes param names
_warned: set[str] = set()
# mlflow.start_run() takes MLFLOW_RUN_ID out of the environment once it has used it: read now,
# as the trial's process starts, and by each start_run (a function trial in the agent's process).
_trial_runs: set[str] = {run for run in [os.environ.get("MLFLOW_RUN_ID")] if run}


# The trial run's experiment, as the process starts: set_experiment() changes the variable.
trial_experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")


def remember_trial_run() -> None:
    if run := os.environ.get("MLFLOW_RUN_ID"):
        _trial_runs.add(run)


def is_trial_run(run_id: Any) -> bool:
    """``run_id`` is a run the agent made for a trial (which it logs nothing into itself)."""
    return bool(run_id) and (run_id in _trial_runs or run_id == os.environ.get("MLFLOW_RUN_ID"))


def already_logged(run_id: Any, key: Any, value: Any) -> bool:
    """True when ``key`` is one of the sweep's params the agent logged into ``run_id``, the trial's
    own run: the call must leave it out."""
    if not is_trial_run(run_id):
        return False
    logged = _sweep_params(os.environ.get("SWEEPER_CONFIG_PATH"))
    name = str(key)
    if name not in logged:
        return False
    if not _same(logged[name], str(value)) and name not in _warned:
        _warned.add(name)
        print(
            f"sweeper: mlflow param {name!r} = {str(value)[:80]!r} not logged: the run already holds the "
            f"sweep's value {logged[name][:80]!r}, and MLflow keeps one value per param",
            file=sys.stderr,
        )
    return True


@functools.lru_cache(maxsize=8)  # per trial: function trials follow one another in one process
def _sweep_params(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {_BAD_KEY.sub("_", k)[:250] or "_": str(v)[:6000] for k, v in _flat(config).items()}


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items() if isinstance(config, dict) else ():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: str, b: str) -> bool:
    if a == b or a.lower() == b.lower():
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False
