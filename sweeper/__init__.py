"""sweeper: self-hosted hyperparameter sweeps.

The in-script API is imported lazily so that ``import sweeper`` stays cheap inside
training scripts and agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Run",
    "TrialStopped",
    "agent",
    "best_trial",
    "init",
    "log",
    "log_artifact",
    "sweep",
    "get_trials",
    "__version__",
]

if TYPE_CHECKING:
    from sweeper.api import agent, best_trial, get_trials, sweep
    from sweeper.run import Run, TrialStopped, init, log, log_artifact


def __getattr__(name: str) -> Any:
    if name in ("init", "log", "log_artifact", "Run", "TrialStopped"):
        from sweeper import run

        return getattr(run, name)
    if name in ("sweep", "agent", "best_trial", "get_trials"):
        from sweeper import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
