"""Metric capture for scripts that log to W&B or MLflow themselves.

When (and only when) the script imports ``wandb`` or ``mlflow``, their logging calls are wrapped:
each call still does exactly what it did, and the numbers it logged are also recorded
(:mod:`.core`), with a ``source`` naming the tracker, so the coordinator sees the values while the
trial runs. :mod:`.wandb_runs` and :mod:`.mlflow_client` hold the wrappers.

In a trial process the agent started, ``sitecustomize`` calls :func:`install`. A trial that runs
as a function in the agent's own process is followed between :func:`follow_in_process` and
:func:`stop_following`.

Standard library only; every wrapper swallows its own errors so the script's logging is untouched.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from . import core, mlflow_client, wandb_runs

_PATCHES = {"wandb": wandb_runs.patch, "mlflow": mlflow_client.patch}
_patched: set[str] = set()
_finder_installed = False


def _patch(name: str, module: Any) -> None:
    if name in _patched:
        return
    _patched.add(name)
    try:
        _PATCHES[name](module)
    except Exception as exc:
        print(f"sweeper: cannot follow {name} metrics ({exc}); they still reach {name}", file=sys.stderr)


class _Finder(importlib.abc.MetaPathFinder):
    """Waits for the top-level ``wandb`` / ``mlflow`` import, lets it finish, then patches."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _PATCHES or name in _patched:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, name)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def __getattr__(self, attr: str) -> Any:  # resource readers and the like come from the real loader
        return getattr(self._inner, attr)

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        _patch(self._name, module)


def _arm() -> None:
    """Patch what is imported already; the rest when it is imported."""
    global _finder_installed
    for name in _PATCHES:
        if name in sys.modules:
            _patch(name, sys.modules[name])
    if not _finder_installed:
        _finder_installed = True
        sys.meta_path.insert(0, _Finder())


def install() -> None:
    """In a trial process: follow what the script logs, unless ``SWEEPER_CAPTURE=0``."""
    if os.environ.get("SWEEPER_CAPTURE", "1") == "0" or not os.environ.get("SWEEPER_METRICS_PATH"):
        return
    _arm()


def follow_in_process(
    sink: Callable[[dict[str, Any]], None], after_log: Callable[[], None], environment: Mapping[str, str]
) -> None:
    """Until :func:`stop_following`, records of what the calling thread (and the threads it
    starts, while it is the only trial running) logs go to ``sink``, and ``after_log`` runs after
    each of its logging calls (a stop raises there). ``environment``: the trial's variables, which
    the caller has put in the process's environment."""
    trial = core.InProcess(sink, after_log, environment, mlflow_client.active_run_id())
    core.start_in_process(trial)
    wandb_runs.reset_for_trial(trial)
    _arm()


def stop_following(exit_code: int) -> None:
    """End the W&B and MLflow runs the trial left open, W&B's with ``exit_code`` (so the next
    trial's ``wandb.init()`` or ``mlflow.start_run()`` starts its own; W&B summary values still
    reach the sink), then stop following."""
    trial = core.trial_here()
    try:
        if trial is not None:
            wandb_runs.finish_opened_runs(trial.opened_wandb_runs, exit_code)
            mlflow_client.end_runs_after(trial.mlflow_run_before)
    finally:
        core.end_in_process()


not_followed_here = core.not_followed_here
