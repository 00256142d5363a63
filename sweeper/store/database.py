"""Transactions over one engine, safe across threads and forks, with errors a person can read."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import OperationalError

from sweeper.store.base import BatchAbandoned, StoreError
from sweeper.store.checkpoint import WalCheckpointer
from sweeper.store.engine import BUSY_TIMEOUT_S, READ_ONLY
from sweeper.store.group_commit import GroupCommit
from sweeper.store.prepared import close_pipeline, pipelined

T = TypeVar("T")

# Forks of this process so far, counted by the child: cheaper to compare on every call than the
# process id, which costs a system call.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


class Database:
    def __init__(self, engine: Engine, *, label: str) -> None:
        self.engine = engine
        self.label = label  # the URL with its password masked, for messages
        self._forks_seen = _forks
        self._fork_lock = threading.Lock()
        # SQLite has one writer at a time. Threads of this process queue for it here, and the calls
        # that queue together share a transaction, instead of polling the database lock with
        # SQLite's busy handler, whose sleeps grow to 100 ms; other processes still wait on the
        # database lock itself.
        self._group = self._group_commit() if engine.dialect.name == "sqlite" else None
        # SQLite files: the log is copied back off the commit path, from the first write on.
        self._wal_file = _sqlite_file(engine)
        self._checkpointer: WalCheckpointer | None = None
        self._checkpointer_lock = threading.Lock()
        self._closed = False
        self._local = threading.local()  # batch: the PostgreSQL transaction this thread holds
        if engine.dialect.name == "postgresql":  # a batch's pipeline closes before SQLAlchemy's statements
            event.listen(engine, "before_cursor_execute", close_pipeline)

    def _engine_here(self) -> Engine:
        # Pooled connections must not cross a fork: a child drops the parent's without closing them.
        if self._forks_seen != _forks:
            with self._fork_lock:
                if self._forks_seen != _forks:
                    self.engine.dispose(close=False)
                    if self._group is not None:  # another thread may have been writing at the fork
                        self._group = self._group_commit()
                    self._checkpointer = None  # its thread did not come along
                    self._checkpointer_lock = threading.Lock()
                    self._forks_seen = _forks
        return self.engine

    def _ensure_checkpointer(self) -> None:
        """SQLite files: the thread that copies the log back, from the first write on."""
        if self._checkpointer is not None or self._wal_file is None:
            return
        # Not under _fork_lock: a fork while this thread starts would leave the child that lock held.
        with self._checkpointer_lock:
            if self._checkpointer is None and not self._closed:
                self._checkpointer = WalCheckpointer(self._wal_file)  # type: ignore[arg-type]
                self._checkpointer.start()

    def _group_commit(self) -> GroupCommit:
        return GroupCommit(
            lambda: self.engine.begin(),
            self._errors,
            timeout=BUSY_TIMEOUT_S,
            timed_out=lambda: StoreError(
                f"store {self.label}: database is locked (waited {BUSY_TIMEOUT_S:.0f} s)"
            ),
        )

    def write(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a transaction that may write, and its result once committed. On SQLite
        the transaction holds the write lock from its start, and may be shared with writes of other
        threads (each in a savepoint of its own: see :mod:`sweeper.store.group_commit`)."""
        engine = self._engine_here()
        if self._group is None:
            if (batch := self._held_batch()) is not None:
                with batch.using() as conn:
                    return work(conn)
            with self._errors(), engine.begin() as conn, pipelined(conn) as pipeline:
                done = work(conn)
                pipeline.close(conn)  # what is queued runs; its error is this write's
                return done
        self._ensure_checkpointer()
        return self._group.run(work)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A transaction that only reads: one consistent snapshot, no write lock. In a thread that
        holds a write transaction (:meth:`holding`), that one, with what it wrote so far."""
        if self._group is not None and (held := self._group.held_connection()) is not None:
            with self._errors():
                yield held
            return
        if (batch := self._held_batch()) is not None:
            with batch.using() as conn:
                yield conn
            return
        with self._errors(), self._engine_here().connect() as conn:
            conn.execution_options(**READ_ONLY)
            with conn.begin():
                yield conn

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Until the block ends, this thread's writes and reads share one transaction, committed
        when it ends. On SQLite each write runs in a savepoint of its own, so one that fails is
        undone alone (:meth:`GroupCommit.holding`). PostgreSQL would spend two round trips per
        write on savepoints, more than the transaction saves; there the first write or read that
        fails spoils the transaction, every later one raises, and the block raises
        :class:`BatchAbandoned` with nothing of it written. Its writes that need no answer
        (:meth:`Prepared.send`) are pipelined: each goes to the server with the next statement
        whose result is needed."""
        engine = self._engine_here()  # after a fork, the group is this process's own
        if self._group is not None:
            self._ensure_checkpointer()
            with self._group.holding():
                yield
            return
        if self._held_batch() is not None:  # already in one: part of it
            yield
            return
        with self._errors(), engine.begin() as conn:
            batch = _Batch(conn, self._errors)
            self._local.batch = batch
            closing_error: Exception | None = None
            try:
                with pipelined(conn) as pipeline:
                    yield
                    if not batch.failed:  # else it rolls back: what is queued need not run
                        try:
                            pipeline.close(conn)
                        except Exception as exc:  # a queued write failed: as if its call had failed
                            batch.failed, closing_error = True, exc
            finally:
                self._local.batch = None
            if batch.failed:  # raised inside the transaction: it rolls back
                raise BatchAbandoned(
                    f"store {self.label}: a call of the batch failed; nothing of it was written"
                ) from closing_error
        for step in batch.after:
            step()

    def _held_batch(self) -> _Batch | None:
        return getattr(self._local, "batch", None)

    def after_commit(self, step: Callable[[], None]) -> None:
        """``step()`` once what this thread wrote so far is committed (at once, outside :meth:`holding`)."""
        if self._group is not None:
            self._group.after_commit(step)
        elif (batch := self._held_batch()) is not None:
            batch.after.append(step)
        else:
            step()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:  # locked past the busy timeout, server gone, ...
            raise StoreError(f"store {self.label}: {str(exc.orig).strip()}") from exc

    def close(self) -> None:
        with self._checkpointer_lock:
            self._closed = True  # a write after this one gets no checkpoint thread of its own
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None and self._forks_seen == _forks:  # its thread is in this process
            checkpointer.stop()
        # In a forked child that never used the store, the pooled connections are the parent's.
        self.engine.dispose(close=self._forks_seen == _forks)


class _Batch:
    """A PostgreSQL transaction one thread holds for a batch of calls (:meth:`Database.holding`)."""

    def __init__(self, conn: Connection, errors: Callable[[], AbstractContextManager[None]]) -> None:
        self.conn = conn
        self.after: list[Callable[[], None]] = []  # to run once committed
        self.failed = False
        self._errors = errors

    @contextmanager
    def using(self) -> Iterator[Connection]:
        """The transaction, for one write or read; an error in it spoils the transaction."""
        if self.failed:
            raise BatchAbandoned("a call of this batch failed: its transaction is given up")
        try:
            with self._errors():
                yield self.conn
        except BaseException:
            self.failed = True
            raise


def _sqlite_file(engine: Engine) -> str | None:
    """The absolute path of an SQLite engine's database file; None for other databases, in-memory
    databases and ``file:`` URIs."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return os.path.abspath(path)
