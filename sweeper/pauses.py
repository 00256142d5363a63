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

_SHORTEST = 0.5  # seconds: shorter gaps are a busy machine's scheduling, not a pause
_KEPT = 64  # pauses remembered, the newest


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
        """``watching=False`` starts no thread: gaps then show only sleep (tests look by hand)."""
        self._tick = tick
        self._wall = wall
        self._monotonic = monotonic
        self._watching = watching
        self._lock = threading.Lock()
        self._last = (wall(), monotonic())
        self._pauses: deque[tuple[int, float]] = deque(maxlen=_KEPT)
        self._count = 0
        self._stopped = threading.Event()
        if watching:
            self._start()

    def _start(self) -> None:
        threading.Thread(target=self._watch, name="sweeper-pause-watch", daemon=True).start()

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
            stopped = (monotonic - last_monotonic) - self._tick if self._watching else 0.0
            length = max(asleep, stopped)
            if length >= _SHORTEST:
                self._count += 1
                self._pauses.append((self._count, length))

    def longest_since(self, seen: int) -> tuple[float, int]:
        """The longest pause after pause number ``seen`` (0.0 if none), and the number to pass next
        time. Looks first, so a pause that has just ended counts even before the thread wakes."""
        self.look()
        with self._lock:
            longest = max((length for number, length in self._pauses if number > seen), default=0.0)
            return longest, self._count

    def after_fork(self) -> None:
        """A forked child has no watching thread: start its own, and forget the parent's clocks."""
        self._lock = threading.Lock()
        self._last = (self._wall(), self._monotonic())
        if self._watching:
            self._start()


_process_watch: PauseWatch | None = None
_process_lock = threading.Lock()


def process_pauses() -> PauseWatch:
    """The watch of this process, started on first use; one thread serves every coordinator."""
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
