"""The trackers of one process: built once per sweep, shared by its agents and its sweep record.

Building an adapter imports its tracker's package, so it happens only for a sweep that names it.
Everything waiting is sent (within a bound) when the last group of the sweep's agents in this
process is done (:func:`use_sweep`, :func:`close_sweep`), and for every sweep when the process ends
(:func:`close_all`).
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sweeper.integrations.base import Tracker
from sweeper.integrations.safe import SafeTracker

from sweeper.redact import redact_urls

log = logging.getLogger("sweeper.integrations")

_lock = threading.Lock()
_sessions: dict[tuple[str, str], list[SafeTracker]] = {}
_users: dict[str, int] = {}  # sweep id: groups of its agents that run in this process
_atexit = False
#: How long the last records may take to reach a tracker when the process ends.
CLOSE_TIMEOUT = 30.0


def _build_mlflow(settings: Mapping[str, Any]) -> Tracker:
    from sweeper.integrations.mlflow import MlflowTracker

    return MlflowTracker.from_block(settings)


def _build_wandb(settings: Mapping[str, Any]) -> Tracker:
    from sweeper.integrations.wandb import WandbTracker

    return WandbTracker.from_block(settings)


BUILDERS: dict[str, Callable[[Mapping[str, Any]], Tracker]] = {"mlflow": _build_mlflow, "wandb": _build_wandb}
_EXTRAS = {"mlflow": "pip install 'sweeper[mlflow]'", "wandb": "pip install 'sweeper[wandb]'"}


def trackers_for(sweep_id: str, block: Mapping[str, Any] | None) -> list[SafeTracker]:
    """The trackers the sweep's ``integrations`` block switches on, made once per process."""
    from sweeper.spec.integrations import enabled_trackers

    if not block:
        return []
    key = (sweep_id, json.dumps(block, sort_keys=True, default=str))
    with _lock:
        if key in _sessions:
            return _sessions[key]
        made: list[SafeTracker] = []
        for name, settings in enabled_trackers(block).items():
            try:
                made.append(SafeTracker(BUILDERS[name](settings)))
            except Exception as exc:
                log.error("%s logging is off for sweep %s%s", name, sweep_id, _why_not(name, settings, exc))
        _sessions[key] = made
        _register_atexit()
        return made


def tracker_problems(block: Mapping[str, Any] | None) -> list[str]:
    """Why the trackers the block switches on cannot be set up in this process (a package not
    installed, settings the tracker refuses), one line each: checked before a sweep runs here,
    so that logging asked for is not found off once the trials have run."""
    from sweeper.spec.integrations import enabled_trackers

    problems = []
    for name, settings in enabled_trackers(block or {}).items():
        try:
            tracker = BUILDERS[name](settings)
            try:
                tracker.check()
            finally:
                tracker.close()
        except Exception as exc:
            problems.append(f"{name}: cannot log{_why_not(name, settings, exc)}")
    return problems


def sweep_tracker_problems(spec: Any) -> list[str]:
    """:func:`tracker_problems` of the trackers a sweep logs to (its ``integrations`` block)."""
    from sweeper.spec.integrations import tracker_settings

    return tracker_problems(tracker_settings(spec))


def agent_tracker_problem(spec: Any, sweep_id: str) -> str | None:
    """Why an agent here cannot log where its sweep logs (a tracker package not installed here,
    credentials missing or refused), checked before it takes a trial: each trial would run
    unrecorded, or its records be retried as if the tracker were down until the agent exits."""
    problems = sweep_tracker_problems(spec)
    if not problems:
        return None
    return f"this agent cannot log where sweep {sweep_id} logs, so it takes no trial: {'; '.join(problems)}"


def _why_not(name: str, settings: Mapping[str, Any], exc: Exception) -> str:
    if isinstance(exc, ImportError):
        return f": {exc} (install it: {_EXTRAS[name]})"
    return f" ({_described(name, settings)}): {type(exc).__name__}: {_hidden(exc)}"


def _described(name: str, settings: Mapping[str, Any]) -> str:
    """Where the settings that failed came from, for a person to fix: the sweep file's keys (a
    URL's user and password, and secrets in its query, shown as ***)."""
    given = [
        f"integrations.{name}.{key}={_hidden(value)!r}" for key, value in settings.items() if key != "enabled"
    ]
    return ", ".join(given) or f"integrations.{name}: settings from the environment"


def _hidden(value: Any) -> str:
    return redact_urls(str(value), keep_user=False)


def _register_atexit() -> None:
    global _atexit
    if not _atexit:
        atexit.register(close_all)
        _atexit = True


def use_sweep(sweep_id: str) -> None:
    """A group of the sweep's agents starts here: its trackers stay open until it calls close_sweep."""
    with _lock:
        _users[sweep_id] = _users.get(sweep_id, 0) + 1


def close_sweep(sweep_id: str, timeout: float = CLOSE_TIMEOUT) -> None:
    """Send what is waiting to the trackers of one sweep, then close them, unless another group of
    its agents (:func:`use_sweep`) still runs here. Other sweeps served by this process
    (``sweeper.agent()`` in another thread) keep theirs."""
    with _lock:
        others = _users.pop(sweep_id, 0) - 1
        if others > 0:
            _users[sweep_id] = others
            return
    _close(lambda key: key[0] == sweep_id, timeout)


def close_all(timeout: float = CLOSE_TIMEOUT) -> None:
    """Send what is waiting to every tracker (for at most ``timeout`` seconds each), then close them."""
    _close(lambda key: True, timeout)


def _close(chosen: Callable[[tuple[str, str]], bool], timeout: float) -> None:
    with _lock:
        keys = [key for key in _sessions if chosen(key)]
        trackers = [tracker for key in keys for tracker in _sessions.pop(key)]
    for tracker in trackers:
        tracker.close(timeout)
