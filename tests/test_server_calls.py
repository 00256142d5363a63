"""Where the agent routes' blocking calls run: in batches, on one thread (ThreadCalls) or on the
event loop (LoopCalls)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from calls_support import Gate, in_one_batch
from sqlalchemy import event

from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, Directive
from sweeper.server import calls as calls_module
from sweeper.server.app import create_app
from sweeper.server.calls import LoopCalls, ThreadCalls
from sweeper.server.fast import AgentRoutes
from sweeper.spec import parse_sweep
from sweeper.store import BatchAbandoned, LeaseCall, Store, TrialCall, open_store

Runner = type[ThreadCalls] | type[LoopCalls]


@pytest.fixture(params=[ThreadCalls, LoopCalls], ids=["thread", "loop"])
def runner(request: pytest.FixtureRequest) -> Runner:
    return request.param  # type: ignore[no-any-return]


def test_calls_run_one_at_a_time_in_arrival_order_on_one_thread(runner: Runner) -> None:
    """ThreadCalls on a thread of its own; LoopCalls on the event loop's."""
    calls = runner()
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
    threads = {thread for _, thread in ran}
    assert threads == ({threading.get_ident()} if runner is LoopCalls else threads - {threading.get_ident()})
    assert len(threads) == 1


def test_a_failing_call_raises_in_its_caller_and_the_next_calls_still_run(runner: Runner) -> None:
    calls = runner()

    def fail() -> int:
        raise ValueError("lease lost")

    async def main() -> list[object]:
        runs = [calls.run(fail), calls.run(lambda: 2), calls.run(fail)]
        return await asyncio.gather(*runs, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, ValueError) and str(first) == "lease lost"
    assert second == 2 and isinstance(third, ValueError)


def test_thread_calls_serve_a_new_event_loop_after_the_first_has_closed() -> None:
    calls = ThreadCalls()

    async def one(value: int) -> int:
        return await asyncio.wait_for(calls.run(lambda: value), 10)

    assert asyncio.run(one(1)) == 1
    assert asyncio.run(one(2)) == 2  # the thread delivered to the loop that is running now


class Batches:
    """A stand-in for ``Store.batch``: counts the batches that ran calls and what ran in each;
    may fail at the end of such a batch."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.sizes: list[int] = []
        self.ran = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        before = self.ran
        yield
        if self.ran == before:  # a gate's batch
            return
        self.sizes.append(self.ran - before)
        if self.fail is not None:
            raise self.fail

    def counted(self, result: object) -> Callable[[], object]:
        def call() -> object:
            self.ran += 1
            return result

        return call


def test_calls_that_queue_while_the_thread_works_run_in_one_batch_and_wake_the_loop_once() -> None:
    batches = Batches()
    calls = ThreadCalls(batches)
    wakes: list[int] = []

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        wake = loop.call_soon_threadsafe

        def counted_wake(callback: Any, *args: Any) -> Any:
            if callback is calls_module._settle:  # not the executor that waits for the gate
                wakes.append(1)
            return wake(callback, *args)

        loop.call_soon_threadsafe = counted_wake  # type: ignore[method-assign]
        return await asyncio.gather(*await in_one_batch(calls, *(batches.counted(i) for i in range(5))))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert batches.sizes == [5]
    assert len(wakes) == 2  # once per batch: the gate's, then the five's


def test_calls_made_in_one_turn_of_the_loop_run_in_one_batch_and_later_ones_in_the_next() -> None:
    batches = Batches()
    calls = LoopCalls(batches)

    async def main() -> list[object]:
        first = [calls.run(batches.counted(i)) for i in range(3)]
        await asyncio.sleep(0)  # one turn: the first three run
        assert all(future.done() for future in first) and batches.sizes == [3]
        later = [calls.run(batches.counted(i)) for i in (3, 4)]
        return await asyncio.gather(*first, *later)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert batches.sizes == [3, 2]


def test_loop_calls_run_at_most_a_batch_s_worth_at_once_and_let_the_loop_serve_in_between() -> None:
    batches = Batches()
    calls = LoopCalls(batches)
    between: list[list[int]] = []

    async def main() -> list[object]:
        futures = [calls.run(batches.counted(i)) for i in range(calls_module.BATCH_CALLS + 5)]
        asyncio.get_running_loop().call_soon(lambda: between.append(list(batches.sizes)))
        return await asyncio.gather(*futures)

    assert asyncio.run(main()) == list(range(calls_module.BATCH_CALLS + 5))
    assert batches.sizes == [calls_module.BATCH_CALLS, 5]
    assert between == [[calls_module.BATCH_CALLS]]  # the loop ran its own callback between the two


def test_a_batch_that_fails_as_a_whole_fails_each_of_its_calls(runner: Runner) -> None:
    batches = Batches(fail=RuntimeError("the commit failed"))
    calls = runner(batches)

    async def main() -> list[object]:
        runs = await in_one_batch(calls, batches.counted(1), batches.counted(2))
        return await asyncio.gather(*runs, return_exceptions=True)

    failed = asyncio.run(main())
    assert len(failed) == 2
    assert all(isinstance(r, RuntimeError) and str(r) == "the commit failed" for r in failed)


def test_the_calls_of_an_abandoned_batch_run_again_each_on_its_own(runner: Runner) -> None:
    batches = Batches(fail=BatchAbandoned("a call of a batch failed; nothing of it was written"))
    calls = runner(batches)
    ran: list[int] = []

    def call(i: int) -> int:
        batches.ran += 1
        ran.append(i)
        if i == 1:
            raise ValueError("lease lost")
        return i

    async def main() -> list[object]:
        runs = await in_one_batch(calls, *(lambda i=i: call(i) for i in range(3)))
        return await asyncio.gather(*runs, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert (first, third) == (0, 2) and isinstance(second, ValueError)
    assert ran == [0, 1, 2, 0, 1, 2]  # in the batch, then again outside it
    assert batches.sizes == [3]


def test_a_cancelled_call_does_not_run_and_the_rest_of_its_batch_does(runner: Runner) -> None:
    calls = runner()
    ran: list[str] = []

    def cancel_first(futures: list[asyncio.Future[Any]]) -> None:
        futures[0].cancel()  # its request went away before its batch started

    async def main() -> list[object]:
        dropped, behind = await in_one_batch(
            calls,
            lambda: ran.append("dropped"),
            lambda: ran.append("behind") or "behind",
            meanwhile=cancel_first,
        )
        return [await asyncio.wait_for(behind, 10), dropped.cancelled()]

    assert asyncio.run(main()) == ["behind", True]
    assert ran == ["behind"]


def test_a_caller_that_goes_away_while_its_call_runs_on_the_thread_stops_nothing() -> None:
    calls = ThreadCalls()
    gate = Gate()

    async def main() -> list[object]:
        first = calls.run(gate)
        await gate.entered()
        behind = calls.run(lambda: "behind")
        first.cancel()  # this one runs on; its result has nobody to go to
        gate.release.set()
        return [await asyncio.wait_for(behind, 10), first.cancelled()]

    assert asyncio.run(main()) == ["behind", True]


def test_calls_serve_on_after_any_exception_a_call_raises(runner: Runner) -> None:
    calls = runner()

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


def test_closing_thread_calls_runs_what_is_queued_then_refuses_new_calls() -> None:
    calls = ThreadCalls()
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


def test_closing_loop_calls_waits_for_the_batch_that_runs_then_refuses_the_rest() -> None:
    """close() from another thread returns only after the batch that runs has ended; what is
    queued then, or called later, is refused and touches nothing. (The server closes its calls
    once its loop has stopped, when no batch runs.)"""
    calls = LoopCalls()
    entered, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def held() -> str:
        entered.set()
        assert release.wait(10)
        ran.append("held")
        return "held"

    def close_while_held() -> None:
        assert entered.wait(10)
        closer = threading.Thread(target=lambda: (calls.close(), ran.append("closed")))
        closer.start()
        time.sleep(0.2)  # time enough for close() to return, did it not wait
        release.set()
        closer.join(10)

    async def main() -> list[object]:
        helper = threading.Thread(target=close_while_held)
        helper.start()
        runs = [calls.run(held)] + [
            calls.run(lambda: ran.append("extra")) for _ in range(calls_module.BATCH_CALLS)
        ]
        results = await asyncio.gather(*runs, return_exceptions=True)
        helper.join(10)
        late = calls.run(lambda: ran.append("late"))
        assert late.done()  # refused at once
        return [results[0], results[-1], *(await asyncio.gather(late, return_exceptions=True))]

    held_result, queued, late = asyncio.run(main())
    assert held_result == "held"
    # The batch ran to its end (the held call and 63 more) before close() returned.
    assert ran == ["held"] + ["extra"] * (calls_module.BATCH_CALLS - 1) + ["closed"]
    for refused in (queued, late):
        assert isinstance(refused, RuntimeError) and "shutting down" in str(refused)


def test_the_callers_of_a_full_batch_hear_their_answers_before_the_next_batch_runs() -> None:
    calls = LoopCalls()
    events: list[str] = []

    async def one(i: int) -> None:
        await calls.run(lambda: events.append(f"ran {i}"))
        events.append(f"answered {i}")

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(calls_module.BATCH_CALLS + 1)))

    asyncio.run(main())
    last = calls_module.BATCH_CALLS
    assert events.index(f"answered {last - 1}") < events.index(f"ran {last}")
    assert events[-2:] == [f"ran {last}", f"answered {last}"]


def test_loop_calls_whose_batch_raises_any_exception_each_hear_it_and_the_loop_serves_on() -> None:
    @contextlib.contextmanager
    def interrupted() -> Iterator[None]:
        yield
        if not served:
            raise KeyboardInterrupt  # in the batch's commit, say

    served: list[object] = []
    calls = LoopCalls(interrupted)

    async def main() -> list[object]:
        first = await asyncio.gather(calls.run(lambda: 1), calls.run(lambda: 2), return_exceptions=True)
        served.append("after")
        return [*first, await calls.run(lambda: "after")]

    one, two, after = asyncio.run(main())
    assert isinstance(one, KeyboardInterrupt) and isinstance(two, KeyboardInterrupt) and after == "after"


def _four_leased_trials(store: Store) -> tuple[Coordinator, list[Any]]:
    coordinator = Coordinator(store)
    sweep = coordinator.create_sweep(
        parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2, 3, 4]}}})
    )
    leased = [coordinator.next_trial(sweep.id, AgentInfo(name=f"a{i}", host="h")) for i in range(4)]
    assert all(isinstance(a, Assignment) for a in leased)
    return coordinator, leased


def _routes(coordinator: Coordinator) -> AgentRoutes:
    app = create_app(coordinator, token=None)
    return AgentRoutes(app, coordinator, token=None, max_body_bytes=1 << 20, max_batch=100)


def test_on_a_database_server_the_agent_routes_run_the_calls_that_queue_together_in_one_transaction(
    tmp_path: Path,
) -> None:
    """Through the server's own routes (an in-process ASGI client), on the calls' thread (as for
    PostgreSQL): heartbeats that arrive while a call runs share one commit, and each still gets
    its answer."""
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.embedded = False  # the way of a database server, here on SQLite
        coordinator, leased = _four_leased_trials(store)
        routes = _routes(coordinator)
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


def test_on_sqlite_the_agent_routes_run_the_calls_of_one_turn_of_the_loop_in_one_transaction(
    tmp_path: Path,
) -> None:
    """Heartbeats whose requests arrive together (their tasks start in one turn of the event loop)
    share one commit, made on the loop's own thread, and each gets its answer."""
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        coordinator, leased = _four_leased_trials(store)
        routes = _routes(coordinator)
        commits: list[str] = []
        event.listen(store._db.engine, "commit", lambda _c: commits.append(threading.current_thread().name))  # type: ignore[attr-defined]

        async def heartbeat(assignment: Any) -> list[Any]:
            body = json.dumps({"lease_id": assignment.lease_id}).encode()
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": f"/api/v1/trials/{assignment.trial_id}/heartbeat",
                "raw_path": b"",
                "query_string": b"",
                "root_path": "",
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8765),
            }
            sent: list[Any] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: Any) -> None:
                sent.append(message)

            await routes(scope, receive, send)
            return sent

        async def main() -> list[list[Any]]:
            return await asyncio.gather(*(heartbeat(a) for a in leased))

        try:
            answers = asyncio.run(main())
        finally:
            routes.close()
    assert [sent[0]["status"] for sent in answers] == [200, 200, 200, 200]
    assert [json.loads(sent[1]["body"]) for sent in answers] == [{"stop": False, "reason": None}] * 4
    assert commits == [threading.current_thread().name]  # one commit, on the loop's thread


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

    calls = ThreadCalls(trial_calls=trial_calls, lease_calls=lease_calls)
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
