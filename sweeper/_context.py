"""The link between an agent running a trial in-process (function mode) and ``sweeper.init``.

The agent sets a :class:`TrialContext` before it calls the user's function and clears it after;
``sweeper.init`` reads it instead of the environment. Standard library only.
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


_current: TrialContext | None = None
_lock = threading.Lock()


def set_current(context: TrialContext | None) -> None:
    global _current
    with _lock:
        _current = context


def current() -> TrialContext | None:
    return _current


def run_id_for(sweep_id: str, trial_number: int) -> str:
    """A run id unique per trial, made only of characters W&B accepts in run ids."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', sweep_id)}-{trial_number}"
