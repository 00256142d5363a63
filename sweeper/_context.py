"""The link between an agent running a trial in-process (function mode) and ``sweeper.init``.

The agent sets a :class:`TrialContext` before it calls the user's function and clears it after;
``sweeper.init`` reads it instead of the environment. Contexts are per thread, because several
agents may run functions side by side in one process. Standard library only.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Receives each ``run.log`` record: ``{"seq", "step", "time", "metrics"}``.
MetricSink = Callable[[Mapping[str, Any]], None]


@dataclass
class TrialContext:
    sweep_id: str
    trial_id: int
    trial_number: int
    config: Mapping[str, Any]
    sink: MetricSink
    trial_dir: Path | None = None
    run: Any = None  # the sweeper.run.Run that init() made in this context
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop_reason: str | None = field(default=None, repr=False)

    def request_stop(self, reason: str) -> None:
        """Make the function's next ``run.log`` raise ``TrialStopped``. Safe from any thread."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason


_local = threading.local()
_active: list[TrialContext] = []
_lock = threading.Lock()


def set_current(context: TrialContext | None) -> None:
    """Set (or clear, with None) the calling thread's context."""
    previous = getattr(_local, "context", None)
    with _lock:
        if previous is not None and previous in _active:
            _active.remove(previous)
        if context is not None:
            _active.append(context)
    _local.context = context


def current() -> TrialContext | None:
    """The calling thread's context; from another thread, the only one active, if just one is."""
    context = getattr(_local, "context", None)
    if context is not None:
        return context
    with _lock:
        # A thread the user's function started (a logger, a data loader) still finds its trial.
        return _active[0] if len(_active) == 1 else None


def run_id_for(sweep_id: str, trial_number: int) -> str:
    """A run id unique per trial, made only of characters W&B accepts in run ids."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', sweep_id)}-{trial_number}"
