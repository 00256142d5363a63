"""SQLite writes of one process: one transaction at a time, shared by the calls that arrive together.

SQLite lets one transaction write at a time. Under load most of a write's cost is not its SQL
but its BEGIN and COMMIT, and the hand-over of the write turn from thread to thread, where each
thread also waits for the interpreter lock. So while one transaction runs, the calls that arrive
queue up, and the thread whose turn comes next runs all of them in one transaction:

- each call in a savepoint of its own, so a call that fails is rolled back alone and its caller
  gets its error, while the others go on;
- every caller gets its result only after the transaction has committed;
- should the transaction fail as a whole (the commit, or a savepoint that cannot be rolled back),
  nothing of it was written: every caller gets that error;

A lone call runs in a transaction of its own, as it would without this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from sweeper.store.prepared import run_on_driver

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("work", "wake", "done", "result", "error")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.wake = threading.Lock()  # released when it is done, or when its turn to lead comes
        self.wake.acquire()
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[no-any-return]


class GroupCommit:
    def __init__(
        self,
        begin: Callable[[], AbstractContextManager[Connection]],
        errors: Callable[[], AbstractContextManager[None]],
        *,
        timeout: float,
        timed_out: Callable[[], Exception],
    ) -> None:
        """``begin``: a write transaction; ``errors``: how store errors read (around each call);
        ``timed_out``: the error for a call that waited ``timeout`` seconds without its turn."""
        self._begin = begin
        self._errors = errors
        self._timeout = timeout
        self._timed_out = timed_out
        self._mutex = threading.Lock()
        self._busy = False  # a thread leads a transaction
        self._queue: list[_Call[Any]] = []

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction, maybe shared with other calls; its result once committed.

        The thread whose turn it is leads: it takes every call queued so far into one transaction,
        wakes their threads once it has ended, and hands the turn to the first call queued
        meanwhile. Each thread waits on a lock of its own, so a transaction wakes only its own
        callers and the next leader."""
        call = _Call(work)
        with self._mutex:
            leading = not self._busy
            if leading:
                self._busy = True
            else:
                self._queue.append(call)
        if not leading:
            self._wait(call)
            if call.done:
                return call.outcome()
        with self._mutex:  # this call's turn: it leads the calls queued so far
            batch = [call, *self._queue]  # a leader is never in the queue: handed the turn, it left it
            self._queue.clear()
        try:
            self._commit(batch)
        finally:
            for other in batch[1:]:
                other.wake.release()
            with self._mutex:
                if self._queue:
                    self._queue[0].wake.release()  # its turn: it leads the rest
                    self._queue.pop(0)
                else:
                    self._busy = False
        return call.outcome()

    def _wait(self, call: _Call[Any]) -> None:
        """Until ``call`` is done or its turn to lead has come."""
        if call.wake.acquire(timeout=self._timeout):
            return
        with self._mutex:
            if call in self._queue:  # still waiting for a turn: give up
                self._queue.remove(call)
                raise self._timed_out()
        call.wake.acquire()  # taken into a transaction, or just given the turn: either comes soon

    def _commit(self, batch: list[_Call[Any]]) -> None:
        try:
            with self._errors(), self._begin() as conn:
                if len(batch) == 1:
                    batch[0].result = batch[0].work(conn)
                else:
                    # Savepoints straight on the driver's connection: through SQLAlchemy's nested
                    # transactions each one cost a statement compiled afresh (its name is new every
                    # time) and about a tenth of the store's time under load.
                    for call in batch:
                        run_on_driver(conn, "SAVEPOINT group_call")
                        try:
                            with self._errors():
                                call.result = call.work(conn)
                        except Exception as exc:  # this call alone failed: undo what it wrote
                            run_on_driver(conn, "ROLLBACK TO SAVEPOINT group_call")
                            call.error = exc
                        run_on_driver(conn, "RELEASE SAVEPOINT group_call")
        except BaseException as exc:
            for call in batch:
                call.result, call.error = None, exc
        finally:
            for call in batch:
                call.done = True
