"""Where the agent routes' blocking coordinator calls run: in batches, one after another.

Most of a call's own cost is its transaction's start and commit, so the calls that arrive
together run in one store batch (one transaction, :meth:`~sweeper.store.Store.batch`). The first
call on each trial (a metric report, a heartbeat or the trial's end) runs first, in a block where
the store may read what they all need at once (:meth:`~sweeper.store.Store.trial_calls`); the
rest follow in arrival order, so a trial's calls keep theirs, with the store told of the leases
among them (:meth:`~sweeper.store.Store.lease_calls`). Calls of one batch all arrived before any
of them was answered, so no caller can tell their order.

Where a batch runs depends on the database:

- :class:`ThreadCalls`, for a database server (PostgreSQL): on one thread, so that the event
  loop serves on while a batch waits for the network. One thread, because each hand-over between
  the event loop and a thread wakes a thread, and on a busy server those wake-ups, and the
  threads' turns at the interpreter lock, cost more than many of the calls themselves: the thread
  takes the calls that arrived while it worked, and wakes the event loop once for all of their
  results. In the load benchmark (64 agents) this served 1.5 times the lifecycles per second of a
  pool of 10 threads, each call in a transaction of its own, and p99 fell from about 100 ms to
  64-91 ms.
- :class:`LoopCalls`, for a database inside this process (SQLite, :attr:`Store.embedded
  <sweeper.store.Store.embedded>`): on the event loop itself, the calls that arrived during one
  turn of the loop together. Such calls spend CPU, not time waiting, and every SQLite statement a
  thread runs hands the interpreter lock to the loop and waits to get it back: run on the loop,
  the same load was served 1.3 to 1.7 times as fast as on a thread, with p99 31-54 ms instead
  of 64-83 ms. The price: while a batch runs, or waits for its turn to write (behind the
  server's other writes, then behind another process that writes to the same file: each wait up
  to SQLite's busy timeout), the server answers nothing else.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from sweeper.store import BatchAbandoned, LeaseCall, TrialCall

T = TypeVar("T")

# The most calls in one batch: each waits for the whole batch's commit.
BATCH_CALLS = 64

_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
Hint = TrialCall | LeaseCall | None  # what a call is, where the store can use knowing it ahead
_Call = tuple[Callable[[], Any], "asyncio.Future[Any]", Hint]  # the call, its future, what it is


class _Batches:
    """How one batch of calls runs; the subclasses decide where and when."""

    def __init__(
        self,
        batch: Callable[[], AbstractContextManager[None]] = nullcontext,
        trial_calls: Callable[[list[TrialCall]], AbstractContextManager[None]] = lambda calls: nullcontext(),
        lease_calls: Callable[[list[LeaseCall]], AbstractContextManager[None]] = lambda calls: nullcontext(),
    ) -> None:
        self._batch = batch
        self._trial_calls = trial_calls
        self._lease_calls = lease_calls
        self._queue: list[_Call] = []
        self._closed = False
        # ThreadCalls: guards the queue and wakes the thread; LoopCalls: held while a batch runs.
        self._lock = threading.Condition()

    def _outcomes(self, batch: list[_Call]) -> list[_Outcome]:
        """Each call's result or exception. Should the batch fail as a whole (its commit), each
        call gets that error; should the store give it up (:class:`~sweeper.store.BatchAbandoned`:
        a call failed that it could not undo alone), its calls run again, each on its own. A call
        whose caller has gone (the request was cancelled) does not run."""
        batch = [queued for queued in batch if not queued[1].cancelled()]
        if not batch:
            return []
        first: list[_Call] = []
        rest: list[_Call] = []
        trials: set[int] = set()
        for queued in batch:  # the first call on each trial, then everything else
            hint = queued[2]
            if isinstance(hint, TrialCall) and hint.trial_id not in trials:
                trials.add(hint.trial_id)
                first.append(queued)
            else:
                rest.append(queued)
        try:
            with self._batch():
                done = []
                if first:
                    with self._trial_calls([hint for _, _, hint in first if isinstance(hint, TrialCall)]):
                        done = [(future, *_outcome(call)) for call, future, _ in first]
                with self._lease_calls([hint for _, _, hint in rest if isinstance(hint, LeaseCall)]):
                    return done + [(future, *_outcome(call)) for call, future, _ in rest]
        except BatchAbandoned:  # nothing of it was written: each call on its own
            return [(future, *_outcome(call)) for call, future, _ in batch]
        except Exception as exc:  # nothing of the batch was written
            return [(future, None, exc) for _, future, _ in batch]


class ThreadCalls(_Batches):
    """Calls one after another on one thread, in batches of those that queued meanwhile."""

    _thread: threading.Thread | None = None  # started by the first call

    def run(self, call: Callable[[], T], hint: Hint = None) -> asyncio.Future[T]:
        """``call()`` on the thread; its result (or exception) once its batch has ended.
        ``hint``: what it is, for a call on one trial or a lease."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._closed:
                future.set_exception(_shutting_down())
                return future
            if self._thread is None:
                thread = threading.Thread(target=self._work, name="agent-route", daemon=True)
                thread.start()
                self._thread = thread
            self._queue.append((call, future, hint))
            if len(self._queue) == 1:  # the thread waits only on an empty queue
                self._lock.notify()
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Run what is queued, then stop the thread: after this, nothing touches the store."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue:  # closed, and nothing left to run
                    return
                batch, self._queue = self._queue[:BATCH_CALLS], self._queue[BATCH_CALLS:]
            try:
                outcomes = self._outcomes(batch)
            except BaseException as exc:  # the thread serves on; these calls hear why they failed
                outcomes = [(future, None, exc) for _, future, _ in batch]
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for outcome in outcomes:
                by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
            for loop, settled in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle, settled)
                except RuntimeError:  # that loop has closed, and nobody waits for these any more
                    pass


class LoopCalls(_Batches):
    """Calls on the event loop that makes them (one loop: the server's), in batches: those made
    during one turn of the loop run together, at most BATCH_CALLS at a time, once the callbacks
    already due have run."""

    _due = False  # a run of the queue is scheduled

    def run(self, call: Callable[[], T], hint: Hint = None) -> asyncio.Future[T]:
        """``call()`` soon, on this loop; its result (or exception) once its batch has ended.
        ``hint``: what it is, for a call on one trial or a lease."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(_shutting_down())
            return future
        self._queue.append((call, future, hint))
        if not self._due:
            self._due = True
            loop.call_soon(self._run_queue)
        return future

    def close(self) -> None:
        """Refuse new calls, and wait for a batch that runs (when called from another thread):
        after this, nothing touches the store. Calls still queued are refused when their turn comes."""
        self._closed = True
        with self._lock:
            pass

    def _run_queue(self) -> None:
        batch, self._queue = self._queue[:BATCH_CALLS], self._queue[BATCH_CALLS:]
        with self._lock:
            try:
                if self._closed:
                    raise _shutting_down()
                outcomes = self._outcomes(batch)
            except BaseException as exc:  # the loop serves on; these calls hear why they failed
                outcomes = [(future, None, exc) for _, future, _ in batch]
        _settle(outcomes)
        if self._queue:  # the rest once these callers have answered, and what else is due has run
            asyncio.get_running_loop().call_soon(self._run_queue)
        else:
            self._due = False


def _outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:  # the route turns it into its answer; the rest run on
        return None, exc


def _shutting_down() -> RuntimeError:
    return RuntimeError("the server is shutting down")


def _settle(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():  # the client went away; the call has run all the same
            continue
        if error is None:
            future.set_result(result)
            continue
        try:
            future.set_exception(error)
        except TypeError:  # StopIteration and its kind cannot travel through a future
            future.set_exception(RuntimeError(f"{type(error).__name__}: {error}"))
