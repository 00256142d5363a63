"""Copying SQLite's write-ahead log back into the database file on a thread of its own.

By default SQLite does this inside a commit, once the log has grown by 1000 pages: that commit then
writes and fsyncs the database file while it holds the write lock, and every other writer waits
behind it. Under load that is a stall every few dozen trial lifecycles. Here the commits leave the
log alone (up to a large safety limit) and :class:`WalCheckpointer` copies it a few times a second
with a PASSIVE checkpoint, which never takes the write lock: writers keep appending meanwhile.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

# Held while the thread is inside SQLite, and taken by a fork: a child forked while that thread held
# one of SQLite's own mutexes (its allocator's, say) would block on it forever at its first connect.
_in_sqlite = threading.Lock()
os.register_at_fork(
    before=_in_sqlite.acquire, after_in_parent=_in_sqlite.release, after_in_child=_in_sqlite.release
)

# Log pages (4 KiB each) after which a commit still checkpoints by itself: only reached when the
# thread below falls far behind, so the log stays bounded even then.
AUTOCHECKPOINT_PAGES = 16_000
# How often the log is copied back; a busy coordinator writes a few hundred pages in this time.
INTERVAL_S = 0.25


class WalCheckpointer:
    """A daemon thread that checkpoints one SQLite database's log every ``interval`` seconds."""

    def __init__(self, path: str, *, interval: float = INTERVAL_S) -> None:
        self._path = path
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        # When the last pass that left every frame of the log copied back began (monotonic clock):
        # everything committed before then is in the database file.
        self.caught_up_at: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with _in_sqlite:
                conn = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:  # commits then checkpoint by themselves, past the safety limit
            log.warning("sqlite %s: no background checkpoints: %s", self._path, exc)
            return
        try:
            while not self._stopped.wait(self._interval):
                self._checkpoint(conn)
            self._checkpoint(conn)  # what the last writes left, before the process goes
        finally:
            with _in_sqlite:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        began = time.monotonic()
        try:
            with _in_sqlite:
                _busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # another checkpoint runs, or the file went away: next pass
            log.debug("sqlite %s: checkpoint skipped: %s", self._path, exc)
            return
        if logged == copied:  # every frame committed before this pass began is in the file now
            self.caught_up_at = began
