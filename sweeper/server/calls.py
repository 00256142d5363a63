"""Where the agent routes' blocking coordinator calls run: off the event loop, on threads.

Each hand-over between the event loop and a thread wakes a thread, and on a busy server those
wake-ups cost more than many of the calls themselves. How many threads pay off depends on the
store: a PostgreSQL store runs calls side by side on its connections; SQLite writes one
transaction at a time, so more threads only take turns at the store (and at the interpreter lock).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# Threads for a store that runs calls side by side: as many as a PostgreSQL store has connections.
# More threads only wait on the store's pool and locks, which wake them in no particular order, so
# under load some requests wait far longer than others; requests beyond these threads queue here in
# arrival order instead. In the load benchmark 40 threads gave 2-7 times the p99 of 10 at the same
# or lower throughput, and 16 no gain.
POOL_THREADS = 10
# The most calls one batch of :class:`SerialCalls` runs: each waits for the whole batch's commit.
BATCH_CALLS = 64


class CallRunner(Protocol):
    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """``call()`` on a thread; its result (or exception) once it has returned."""


class PooledCalls:
    """Calls on a pool of threads, one thread each."""

    def __init__(self, threads: int = POOL_THREADS) -> None:
        # Lighter per call than anyio's worker threads, which FastAPI's plain routes go through.
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="agent-route")

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._threads, call)


class SerialCalls:
    """Calls one after another on one thread, for a store that writes one transaction at a time.

    The thread takes the calls that arrived while it worked, runs them in arrival order within
    one ``batch()`` (the store's :meth:`~sweeper.store.Store.batch`: one transaction for all of
    their writes), and once that has ended wakes the event loop once for all of their results.
    Should the batch fail as a whole (its commit), each of its calls gets that error."""

    def __init__(self, batch: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self._batch = batch
        self._ready = threading.Condition()
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._ready:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="agent-route", daemon=True)
                self._thread.start()
            self._queue.append((call, future))
            if len(self._queue) == 1:  # the thread waits only on an empty queue
                self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch, self._queue = self._queue[:BATCH_CALLS], self._queue[BATCH_CALLS:]
            try:
                with self._batch():
                    outcomes = [(future, *_outcome(call)) for call, future in batch]
            except Exception as exc:  # nothing of the batch was written
                outcomes = [(future, None, exc) for _, future in batch]
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for outcome in outcomes:
                by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
            for loop, settled in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle, settled)
                except RuntimeError:  # that loop has closed, and nobody waits for these any more
                    pass


def _outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except Exception as exc:  # the route turns it into its answer
        return None, exc


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():  # the client went away; the call has run all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
