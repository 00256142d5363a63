"""A trial's time limits, watched by its agent so they hold while the coordinator is away.

``sweeper.trial_timeout`` stops a trial that runs too long, as early termination would: what it
logged counts. ``sweeper.stall_timeout`` fails a trial that has neither logged a metric nor printed a
line for that long: a training job stuck in a collective (one DDP rank gone) or on a dead file system
holds its GPU and never exits; as a failure, its configuration runs again (``sweeper.max_retries``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class TrialLimits:
    def __init__(
        self,
        time_limit: float | None,
        stall_limit: float | None,
        output: Iterable[Path],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.time_limit = time_limit
        self.stall_limit = stall_limit
        self._output = list(output)
        self._clock = clock
        self._started = self._last_active = clock()
        self._sizes: list[int] = []
        self.stalled = False  # the limit reached was the stall limit

    def check(self, logged: bool) -> str | None:
        """The reason to end the trial now, or None. ``logged``: the trial logged metrics just now."""
        now = self._clock()
        sizes = [_size(p) for p in self._output] if self.stall_limit else []
        if logged or sizes != self._sizes:
            self._sizes, self._last_active = sizes, now
        if self.time_limit is not None and now - self._started > self.time_limit:
            return time_limit_reason(self.time_limit)
        if self.stall_limit is not None and now - self._last_active > self.stall_limit:
            self.stalled = True
            return (
                f"stalled: nothing logged or printed for {_shown(self.stall_limit)} (sweeper.stall_timeout)"
            )
        return None


def time_limit_reason(seconds: float) -> str:
    return f"time limit: ran longer than {_shown(seconds)} (sweeper.trial_timeout)"


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _shown(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length and seconds % length == 0:
            return f"{seconds / length:g}{unit}"
    return f"{seconds:g}s"
