"""Noticing the times this process did not run: the machine slept, or the process was stopped.

A coordinator judges leases by the wall clock. Were it itself asleep (a laptop's lid closed, a VM
paused) or stopped (Ctrl-Z, SIGSTOP) for longer than a lease, every lease would read as run out
when it wakes, though the agents kept their trials running and were refused only because no one
answered them. A :class:`PauseWatch` tells it so, and it gives those leases time again.

Two signs, because each kind of pause shows in one clock only:

* asleep: the wall clock went on while the monotonic clock did not (Linux and macOS leave
  suspended time out of the monotonic clock);
* stopped: a thread that looks every ``tick`` seconds did not get to look for much longer.

A wall clock set forward looks like sleep, and is treated alike: the leases it cut short get time.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

_SHORTEST = 0.5  # seconds: shorter gaps are a busy machine's scheduling, not a pause
_KEPT = 64  # pauses remembered, the newest


@dataclass(frozen=True)
class Pauses:
    """What a reader has not seen yet: the longest of the new pauses (0.0 when there are none), the
    wall-clock time the earliest of them began, and the number to pass next time."""

    longest: float
    began: float | None
    seen: int


class PauseWatch:
    """The pauses of this process, each numbered; a reader keeps the number of the last it saw."""

    def __init__(
        self,
        *,
        tick: float = 0.25,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        watching: bool = True,
    ) -> None:
        """``watching=False`` starts no thread: gaps then show only sleep (tests look by hand).
        The thread starts on the first :meth:`since`, so a process that never asks has none."""
        self._tick = tick
        self._wall = wall
        self._monotonic = monotonic
        self._watching = watching
        self._lock = threading.Lock()
        self._last = (wall(), monotonic())
        self._pauses: deque[tuple[int, float, float]] = deque(maxlen=_KEPT)  # number, length, began
        self._count = 0
        self._running = False  # the watching thread; until it runs, a gap between looks is no stop
        self._stopped = threading.Event()

    def _watch(self) -> None:
        while not self._stopped.wait(self._tick):
            self.look()

    def stop(self) -> None:
        """End the watching thread (the process's own watch runs as long as the process)."""
        self._stopped.set()

    def look(self) -> None:
        """Compare the clocks with the last look, and note a pause if they show one."""
        with self._lock:
            wall, monotonic = self._wall(), self._monotonic()
            last_wall, last_monotonic = self._last
            self._last = (wall, monotonic)
            asleep = (wall - last_wall) - (monotonic - last_monotonic)
            stopped = (monotonic - last_monotonic) - self._tick if self._running else 0.0
            length = max(asleep, stopped)
            if length >= _SHORTEST:
                self._count += 1
                self._pauses.append((self._count, length, last_wall))

    def since(self, seen: int) -> Pauses:
        """The pauses after pause number ``seen``. Looks first, so a pause that has just ended
        counts even before the thread wakes."""
        if self._watching and not self._running:
            with self._lock:
                if not self._running:
                    self._running = True
                    self._last = (self._wall(), self._monotonic())
                    threading.Thread(target=self._watch, name="sweeper-pause-watch", daemon=True).start()
        self.look()
        with self._lock:
            new = [(length, began) for number, length, began in self._pauses if number > seen]
            return Pauses(
                longest=max((length for length, _ in new), default=0.0),
                began=min((began for _, began in new), default=None),
                seen=self._count,
            )

    def after_fork(self) -> None:
        """A forked child has no watching thread: it starts its own when asked, with fresh clocks."""
        self._lock = threading.Lock()
        self._last = (self._wall(), self._monotonic())
        self._running = False


_process_watch: PauseWatch | None = None
_process_lock = threading.Lock()


def process_pauses() -> PauseWatch:
    """The watch of this process; one thread serves every coordinator."""
    global _process_watch
    with _process_lock:
        if _process_watch is None:
            _process_watch = PauseWatch()
        return _process_watch


def _after_fork_in_child() -> None:
    global _process_lock
    _process_lock = threading.Lock()
    if _process_watch is not None:
        _process_watch.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
