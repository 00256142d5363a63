"""Where the agent routes' blocking calls run: on one thread, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, Directive
from sweeper.server import calls as calls_module
from sweeper.server.app import create_app
from sweeper.server.calls import SerialCalls
from sweeper.server.fast import AgentRoutes
from sweeper.spec import parse_sweep
from sweeper.store import BatchAbandoned, LeaseCall, TrialCall, open_store


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


class Gate:
    """A first call that holds the thread until released, so that the calls queued meanwhile
    form the next batch together."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(10)
        return "gate"

    async def entered(self) -> None:
        assert await asyncio.get_running_loop().run_in_executor(None, self.started.wait, 10)


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
        if self.fail is not None and self.ran - before > 1:  # not the gate's batch
            raise self.fail

    def counted(self, result: object) -> Callable[[], object]:
        def call() -> object:
            self.ran += 1
            return result

        return call


def test_calls_that_queue_together_run_in_one_batch_and_wake_the_loop_once() -> None:
    batches = Batches()
    calls = SerialCalls(batches)
    gate = Gate()
    wakes: list[int] = []

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        wake = loop.call_soon_threadsafe

        def counted_wake(callback: Any, *args: Any) -> Any:
            if callback is calls_module._settle:  # not the executor that waits for the gate
                wakes.append(1)
            return wake(callback, *args)

        loop.call_soon_threadsafe = counted_wake  # type: ignore[method-assign]
        first = calls.run(gate)
        await gate.entered()
        rest = [calls.run(batches.counted(i)) for i in range(5)]  # queued while the gate runs
        gate.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == ["gate", 0, 1, 2, 3, 4]
    assert batches.sizes == [0, 5]  # the gate's batch, then the five together
    assert len(wakes) == 2  # once per batch


def test_a_batch_that_fails_as_a_whole_fails_each_of_its_calls() -> None:
    batches = Batches(fail=RuntimeError("the commit failed"))
    calls = SerialCalls(batches)
    gate = Gate()

    async def main() -> list[object]:
        first = calls.run(gate)
        await gate.entered()
        rest = [calls.run(batches.counted(1)), calls.run(batches.counted(2))]
        gate.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    gated, *failed = asyncio.run(main())
    assert gated == "gate"
    assert all(isinstance(r, RuntimeError) and str(r) == "the commit failed" for r in failed)


def test_the_calls_of_an_abandoned_batch_run_again_each_on_its_own() -> None:
    batches = Batches(fail=BatchAbandoned("a call of a batch failed; nothing of it was written"))
    calls = SerialCalls(batches)
    gate = Gate()
    ran: list[int] = []

    def call(i: int) -> int:
        batches.ran += 1
        ran.append(i)
        if i == 1:
            raise ValueError("lease lost")
        return i

    async def main() -> list[object]:
        first = calls.run(gate)
        await gate.entered()
        runs = [calls.run(lambda i=i: call(i)) for i in range(3)]
        gate.release.set()
        return await asyncio.gather(first, *runs, return_exceptions=True)

    gated, first, second, third = asyncio.run(main())
    assert (gated, first, third) == ("gate", 0, 2) and isinstance(second, ValueError)
    assert ran == [0, 1, 2, 0, 1, 2]  # in the batch, then again outside it
    assert batches.sizes == [0, 3]


def test_a_cancelled_call_does_not_run_and_a_cancelled_caller_does_not_stop_the_rest() -> None:
    calls = SerialCalls()
    gate = Gate()
    ran: list[str] = []

    async def main() -> list[object]:
        first = calls.run(gate)
        await gate.entered()
        dropped = calls.run(lambda: ran.append("dropped"))
        behind = calls.run(lambda: ran.append("behind") or "behind")
        dropped.cancel()  # its request went away before its batch started
        first.cancel()  # this one runs on; its result has nobody to go to
        gate.release.set()
        return [await asyncio.wait_for(behind, 10), first.cancelled()]

    assert asyncio.run(main()) == ["behind", True]
    assert ran == ["behind"]


def test_the_thread_serves_on_after_any_exception_a_call_raises() -> None:
    calls = SerialCalls()

    def exits() -> None:
        raise SystemExit(3)

    def stops() -> None:
        raise StopIteration  # cannot be set on a future as it is

    async def main() -> list[object]:
        runs = [calls.run(exits), calls.run(stops), calls.run(lambda: "after")]
        return await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 10)

    exited, stopped, after = asyncio.run(main())
    assert isinstance(exited, SystemExit) and isinstance(stopped, RuntimeError)
    assert "StopIteration" in str(stopped) and after == "after"


def test_closing_runs_what_is_queued_then_refuses_new_calls() -> None:
    calls = SerialCalls()
    gate = Gate()

    async def main() -> tuple[object, ...]:
        first = calls.run(gate)
        await gate.entered()
        queued = calls.run(lambda: "queued")
        closing = asyncio.get_running_loop().run_in_executor(None, calls.close)
        gate.release.set()
        await asyncio.wait_for(closing, 10)
        late = calls.run(lambda: "late")
        return await asyncio.gather(first, queued, late, return_exceptions=True)

    gated, queued, late = asyncio.run(main())
    assert (gated, queued) == ("gate", "queued")
    assert isinstance(late, RuntimeError) and "shutting down" in str(late)


def test_the_agent_routes_run_the_calls_that_queue_together_in_one_transaction(tmp_path: Path) -> None:
    """Through the server's own routes (an in-process ASGI client): heartbeats that arrive while
    a call runs share one commit, and each still gets its answer."""
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        coordinator = Coordinator(store)
        sweep = coordinator.create_sweep(
            parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2, 3, 4]}}})
        )
        leased = [coordinator.next_trial(sweep.id, AgentInfo(name=f"a{i}", host="h")) for i in range(4)]
        assert all(isinstance(a, Assignment) for a in leased)
        routes = AgentRoutes(
            create_app(coordinator, token=None),
            coordinator,
            token=None,
            max_body_bytes=1 << 20,
            max_batch=100,
        )
        started, release = threading.Event(), threading.Event()
        heartbeat = coordinator.heartbeat

        def gated(trial_id: int, lease_id: str, **note: Any) -> Directive:
            if trial_id == leased[0].trial_id:  # type: ignore[union-attr]
                started.set()
                assert release.wait(10)
            return heartbeat(trial_id, lease_id, **note)

        coordinator.heartbeat = gated  # type: ignore[method-assign]
        commits: list[str] = []
        event.listen(store._db.engine, "commit", lambda _c: commits.append(threading.current_thread().name))  # type: ignore[attr-defined]

        async def main() -> list[int]:
            transport = httpx.ASGITransport(app=routes)
            async with httpx.AsyncClient(transport=transport, base_url="http://sweeper") as client:

                def beat(a: Any) -> Any:
                    return client.post(
                        f"/api/v1/trials/{a.trial_id}/heartbeat", json={"lease_id": a.lease_id}
                    )

                first = asyncio.ensure_future(beat(leased[0]))
                assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
                rest = [asyncio.ensure_future(beat(a)) for a in leased[1:]]
                deadline = time.monotonic() + 10
                while len(routes._calls._queue) < 3:  # the three heartbeats wait behind the first
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.001)
                release.set()
                answers = await asyncio.gather(first, *rest)
                return [answer.status_code for answer in answers]

        try:
            assert asyncio.run(main()) == [200, 200, 200, 200]
        finally:
            routes.close()
        assert commits.count("agent-route") == 2  # the first call's batch, then the other three's


def test_a_lease_expiry_pass_the_store_refuses_is_one_line_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.exc import OperationalError

    from sweeper.server.main import LeaseExpiry

    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        coordinator = Coordinator(store)
        coordinator.create_sweep(
            parse_sweep({"method": "grid", "program": "t.py", "parameters": {"x": {"value": 1}}})
        )

        def dropped(*_: Any) -> None:  # what a PostgreSQL server that closed the connection raises
            raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))

        event.listen(store._db.engine, "before_cursor_execute", dropped)  # type: ignore[attr-defined]
        expiry = LeaseExpiry(coordinator, every=0.5)
        with caplog.at_level("WARNING", logger="sweeper.server.main"):
            expiry.start()
            wait = time.monotonic() + 10
            while not caplog.records and time.monotonic() < wait:
                time.sleep(0.05)
            expiry.stop()
    record = caplog.records[0]
    assert record.exc_info is None and "server closed the connection" in record.getMessage(), record


def test_the_first_call_on_each_trial_runs_first_inside_the_trial_calls_block() -> None:
    """The store may read what they need ahead (``Store.trial_calls``); the other calls, and a
    trial's later calls, run after the block in arrival order, in a block that tells the store of
    the leases among them (``Store.lease_calls``)."""
    ran: list[Any] = []

    @contextlib.contextmanager
    def trial_calls(calls: list[TrialCall]) -> Iterator[None]:
        ran.append(("reading ahead for", [(c.trial_id, c.points) for c in calls]))
        yield
        ran.append("block ends")

    @contextlib.contextmanager
    def lease_calls(calls: list[LeaseCall]) -> Iterator[None]:
        ran.append(("leases of", [c.sweep_id for c in calls]))
        yield
        ran.append("leases end")

    calls = SerialCalls(trial_calls=trial_calls, lease_calls=lease_calls)
    gate = Gate()

    def note(what: Any) -> Callable[[], Any]:
        return lambda: ran.append(what)

    async def main() -> None:
        first = calls.run(gate)
        await gate.entered()
        runs = [
            calls.run(note("lease s1"), LeaseCall("s1")),
            calls.run(note("report 7 first"), TrialCall(7, ["p1"])),  # type: ignore[list-item]
            calls.run(note("lease s2"), LeaseCall("s2")),
            calls.run(note("heartbeat 3"), TrialCall(3, ())),
            calls.run(note("end 5"), TrialCall(5)),
            calls.run(note("report 3"), TrialCall(3, ["p"])),  # type: ignore[list-item]
            calls.run(note("end 7"), TrialCall(7)),
            calls.run(note("heartbeat 9"), TrialCall(9, ())),
            calls.run(note("end 9"), TrialCall(9)),  # after its heartbeat, which it would refuse
            calls.run(note("lease s1 again"), LeaseCall("s1")),
        ]
        gate.release.set()
        await asyncio.gather(first, *runs)

    asyncio.run(main())
    assert ran == [
        ("leases of", []),  # the gate's batch
        "leases end",
        ("reading ahead for", [(7, ["p1"]), (3, ()), (5, None), (9, ())]),
        "report 7 first",
        "heartbeat 3",
        "end 5",
        "heartbeat 9",
        "block ends",
        ("leases of", ["s1", "s2", "s1"]),
        "lease s1",
        "lease s2",
        "report 3",
        "end 7",
        "end 9",
        "lease s1 again",
        "leases end",
    ]
