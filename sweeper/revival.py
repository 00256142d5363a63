"""Giving leases the time a pause of the coordinator's process owes them, holding up no decision.

After this process slept or was stopped (:mod:`sweeper.pauses`) for long enough that leases ran
out unanswered, the leases that were held when the pause began get a lease period from now
(:meth:`Store.extend_running_leases` with ``held_at``), as a restarted server gives them. That
write runs on a thread of its own: a decision may hold a transaction (the server runs agents'
calls in batches) that the write would wait for, so no decision waits for the write. Until it is
committed, decisions are made as of the moment the pause began: a lease held then is still held,
a renewal never moves a lease earlier, and an expiry pass finds only what had run out before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sweeper.pauses import Pauses, PauseWatch
from sweeper.store.base import Store

log = logging.getLogger("sweeper.coordinator")

# Seconds this process must have been away before leases get time again. Shorter pauses (or a fifth
# of a lease, if longer) cut no lease short: an agent heartbeats at least three times a lease.
SHORTEST_REVIVING_PAUSE = 1.0


class Revival:
    def __init__(self, store: Store, watch: PauseWatch, *, lease_seconds: float, clock: Callable[[], float]):
        self._store = store
        self._watch = watch
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._shortest = max(SHORTEST_REVIVING_PAUSE, lease_seconds / 5)
        self._lock = threading.Lock()  # held for moments, never across a store call
        self._handled = watch.since(0).seen  # pauses up to this number owe the leases nothing now
        self._reviving = False

    def time(self) -> tuple[float, int]:
        """The time for a lease decision, and the mark to pass to :meth:`owes` once its lease is
        written: the clock, or the moment a pause began while the leases it owes wait for their
        time (the write is started here, when it is not under way)."""
        with self._lock:
            mark = self._handled
        now = self._clock()
        pauses = self._watch.since(mark)
        if pauses.longest < self._shortest:
            return now, mark
        self._start(pauses)
        return min(now, pauses.began if pauses.began is not None else now), mark

    def owes(self, mark: int) -> bool:
        """Whether a lease written with the time given with ``mark`` may have been left out of the
        time given to the others: a long enough pause came after the mark, and perhaps before the
        lease was written. Its writer then gives it its time itself."""
        return self._watch.since(mark).longest >= self._shortest

    def _start(self, pauses: Pauses) -> None:
        with self._lock:
            if self._reviving:
                return
            self._reviving = True
        threading.Thread(target=self._revive, args=(pauses,), name="sweeper-revival", daemon=True).start()

    def _revive(self, pauses: Pauses) -> None:
        try:
            revived = self._store.extend_running_leases(
                expires_at=self._clock() + self._lease_seconds, held_at=pauses.began
            )
        except Exception as exc:  # a busy store, say: the next decision starts it again
            log.warning(
                "leases not yet given time after a pause (%s: %s); trying again", type(exc).__name__, exc
            )
            with self._lock:
                self._reviving = False
            return
        with self._lock:
            self._handled = max(self._handled, pauses.seen)
            self._reviving = False
        if revived:
            log.warning(
                "this process did not run for %.0fs (the machine slept, or the process was stopped): "
                "%d running trial(s) get %.0fs from now for their agents to be heard",
                pauses.longest,
                len(revived),
                self._lease_seconds,
            )
