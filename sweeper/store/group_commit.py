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

A thread that makes many writes in a row can also hold the turn itself (:meth:`GroupCommit.holding`):
its writes then share one transaction, each in a savepoint of its own, committed when it lets go.
The server's agent routes write that way (``Store.batch``); the calls of other threads (the rest
of the API, lease expiry, ``sweeper run``'s agents) share transactions as above.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from sweeper.store.prepared import run_on_driver

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("work", "wake", "done", "result", "error")

    def __init__(self, work: Callable[[Connection], T] | None) -> None:
        """``work`` None: a thread waiting for the turn to hold it (:meth:`GroupCommit.holding`)."""
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


class _Held:
    __slots__ = ("thread", "conn", "after", "lost")

    def __init__(self, conn: Connection) -> None:
        self.thread = threading.get_ident()
        self.conn = conn
        self.after: list[Callable[[], None]] = []  # to run once committed
        self.lost: BaseException | None = None  # why the transaction is gone, if it is


class _TransactionLost(Exception):
    """SQLite rolled the whole transaction back (a full disk, an I/O error), not only one
    statement: nothing of it stands, whatever calls before this one were told."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


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
        self._held: _Held | None = None

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction, maybe shared with other calls; its result once committed.

        The thread whose turn it is leads: it takes every call queued so far into one transaction,
        wakes their threads once it has ended, and hands the turn to the first call queued
        meanwhile. Each thread waits on a lock of its own, so a transaction wakes only its own
        callers and the next leader."""
        if (held := self._mine()) is not None:
            return self._held_call(held, work)  # this thread holds the transaction
        call = _Call(work)
        if not self._take_turn(call):
            return call.outcome()
        with self._mutex:  # this call's turn: it leads the calls queued before the next holder
            # A leader is never in the queue: handed the turn, it left it.
            cut = next((i for i, c in enumerate(self._queue) if c.work is None), len(self._queue))
            batch = [call, *self._queue[:cut]]
            del self._queue[:cut]
        try:
            self._commit(batch)
        finally:
            for other in batch[1:]:
                other.wake.release()
            self._pass_turn()
        return call.outcome()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Until the block ends, this thread's calls to :meth:`run` share one transaction, each in
        a savepoint of its own (one that fails is rolled back alone and raises), and return at once;
        they are committed together when the block ends. Should that fail, nothing of them was
        written, and the block raises. Other threads' calls queue meanwhile, as behind any
        transaction. What :meth:`after_commit` was given in the block runs once committed.
        Within a block of its own, a thread's block is part of the outer one."""
        if self.held_connection() is not None:
            yield
            return
        turn: _Call[None] = _Call(None)
        self._take_turn(turn)
        try:
            with self._errors(), self._begin() as conn:
                held = self._held = _Held(conn)
                try:
                    yield
                finally:
                    self._held = None
                if held.lost is not None:  # nothing of the batch stands: its calls must hear so
                    raise held.lost
        finally:
            self._pass_turn()
        for step in held.after:
            step()

    def _held_call(self, held: _Held, work: Callable[[Connection], T]) -> T:
        if held.lost is not None:
            raise held.lost
        try:
            return self._in_savepoint(held.conn, work)
        except _TransactionLost as lost:
            held.lost = lost.cause
            raise lost.cause from None

    def after_commit(self, step: Callable[[], None]) -> None:
        """``step()`` once this thread's writes so far are committed: at once, or when the
        transaction this thread holds commits (never, should it fail)."""
        if (held := self._mine()) is not None:
            held.after.append(step)
        else:
            step()

    def held_connection(self) -> Connection | None:
        """The transaction this thread holds (:meth:`holding`), if it holds one."""
        held = self._mine()
        return held.conn if held is not None else None

    def _mine(self) -> _Held | None:
        """The transaction this thread holds, if it holds one."""
        held = self._held
        return held if held is not None and held.thread == threading.get_ident() else None

    def _take_turn(self, call: _Call[Any]) -> bool:
        """Wait for the turn to lead a transaction; False when another leader ran ``call`` meanwhile."""
        with self._mutex:
            leading = not self._busy
            if leading:
                self._busy = True
            else:
                self._queue.append(call)
        if not leading:
            self._wait(call)
            return not call.done
        return True

    def _pass_turn(self) -> None:
        with self._mutex:
            if self._queue:
                self._queue[0].wake.release()  # its turn: it leads the rest
                self._queue.pop(0)
            else:
                self._busy = False

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
                    batch[0].result = batch[0].work(conn)  # type: ignore[misc]
                else:
                    for call in batch:
                        try:
                            call.result = self._in_savepoint(conn, call.work)
                        except _TransactionLost:
                            raise  # every call of the transaction fails
                        except Exception as exc:  # this call alone failed, and wrote nothing
                            call.error = exc
        except BaseException as exc:
            error = exc.cause if isinstance(exc, _TransactionLost) else exc
            for call in batch:
                call.result, call.error = None, error
        finally:
            for call in batch:
                call.done = True

    def _in_savepoint(self, conn: Connection, work: Callable[[Connection], T]) -> T:
        # Savepoints straight on the driver's connection: through SQLAlchemy's nested transactions
        # each one cost a statement compiled afresh (its name is new every time) and about a tenth
        # of the store's time under load.
        run_on_driver(conn, "SAVEPOINT group_call")
        try:
            with self._errors():
                result = work(conn)
        except BaseException as exc:  # undo what it wrote
            if not conn.connection.driver_connection.in_transaction:
                raise _TransactionLost(exc) from exc  # there is no savepoint left to go back to
            try:
                run_on_driver(conn, "ROLLBACK TO SAVEPOINT group_call")
                run_on_driver(conn, "RELEASE SAVEPOINT group_call")
            except Exception:
                raise _TransactionLost(exc) from exc
            raise
        try:
            run_on_driver(conn, "RELEASE SAVEPOINT group_call")
        except Exception as exc:
            raise _TransactionLost(exc) from exc
        return result
