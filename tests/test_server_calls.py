"""Where the agent routes' blocking calls run: on one thread, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from sweeper.server.calls import SerialCalls
from sweeper.store import BatchAbandoned


def test_serial_calls_run_one_at_a_time_on_one_thread_in_arrival_order() -> None:
    calls = SerialCalls()
    ran: list[tuple[int, int]] = []
    busy = threading.Lock()

    def call(i: int) -> int:
        assert busy.acquire(blocking=False), "two calls ran at once"
        try:
            ran.append((i, threading.get_ident()))
            time.sleep(0.001)  # calls that arrive meanwhile queue up
            return i * i
        finally:
            busy.release()

    async def main() -> list[int]:
        return await asyncio.gather(*(calls.run(lambda i=i: call(i)) for i in range(50)))

    assert asyncio.run(main()) == [i * i for i in range(50)]
    assert [i for i, _ in ran] == list(range(50))
    assert len({thread for _, thread in ran}) == 1 and ran[0][1] != threading.get_ident()


def test_a_failing_call_raises_in_its_caller_and_the_next_calls_still_run() -> None:
    calls = SerialCalls()

    def fail() -> int:
        raise ValueError("lease lost")

    async def main() -> list[object]:
        runs = [calls.run(fail), calls.run(lambda: 2), calls.run(fail)]
        return await asyncio.gather(*runs, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, ValueError) and str(first) == "lease lost"
    assert second == 2 and isinstance(third, ValueError)


def test_serial_calls_serve_a_new_event_loop_after_the_first_has_closed() -> None:
    calls = SerialCalls()

    async def one(value: int) -> int:
        return await asyncio.wait_for(calls.run(lambda: value), 10)

    assert asyncio.run(one(1)) == 1
    assert asyncio.run(one(2)) == 2  # the thread delivered to the loop that is running now


def test_a_cancelled_caller_does_not_stop_the_calls_behind_it() -> None:
    calls = SerialCalls()
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "slow"

    async def main() -> str:
        waiting = asyncio.ensure_future(calls.run(slow))
        behind = calls.run(lambda: "behind")
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        waiting.cancel()
        release.set()
        return await asyncio.wait_for(behind, 10)

    assert asyncio.run(main()) == "behind"


class Batches:
    """A stand-in for ``Store.batch``: counts the batches and what ran in each; may fail at the end."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.sizes: list[int] = []
        self.ran = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        before = self.ran
        yield
        self.sizes.append(self.ran - before)
        if self.fail is not None:
            raise self.fail


def test_calls_that_queue_together_run_in_one_batch() -> None:
    batches = Batches()
    calls = SerialCalls(batches)
    started, release = threading.Event(), threading.Event()

    def call(i: int) -> int:
        batches.ran += 1
        if i == 0:
            started.set()
            release.wait(10)
        return i

    async def main() -> list[int]:
        first = calls.run(lambda: call(0))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        rest = [calls.run(lambda i=i: call(i)) for i in range(1, 6)]  # queue while the first runs
        release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]
    assert batches.sizes == [1, 5]


def test_a_batch_that_fails_as_a_whole_fails_each_of_its_calls() -> None:
    calls = SerialCalls(Batches(fail=RuntimeError("the commit failed")))

    async def main() -> list[object]:
        return await asyncio.gather(calls.run(lambda: 1), calls.run(lambda: 2), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and str(r) == "the commit failed" for r in results)


def test_the_calls_of_an_abandoned_batch_run_again_each_on_its_own() -> None:
    batches = Batches(fail=BatchAbandoned("a call of a batch failed; nothing of it was written"))
    calls = SerialCalls(batches)
    ran: list[int] = []

    def call(i: int) -> int:
        batches.ran += 1
        ran.append(i)
        if i == 1:
            raise ValueError("lease lost")
        return i

    async def main() -> list[object]:
        runs = [calls.run(lambda i=i: call(i)) for i in range(3)]
        return await asyncio.gather(*runs, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert (first, third) == (0, 2) and isinstance(second, ValueError)
    assert ran == [0, 1, 2, 0, 1, 2]  # in the batch, then again outside it
    assert batches.sizes == [3]
