"""Calls queued so that they form one batch of the server's agent-route calls (sweeper.server.calls)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from sweeper.server.calls import Hint, LoopCalls, ThreadCalls


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


async def in_one_batch(
    calls: ThreadCalls | LoopCalls,
    *queued: Callable[[], Any] | tuple[Callable[[], Any], Hint],
    meanwhile: Callable[[list[asyncio.Future[Any]]], object] = lambda futures: None,
) -> list[asyncio.Future[Any]]:
    """``queued`` (calls, or (call, what it is) pairs) queued so that they form one batch: behind a
    gate that holds the thread, in a batch of its own (ThreadCalls), or in one turn of the loop
    (LoopCalls). ``meanwhile`` sees their futures before the batch can start."""
    pairs = [q if isinstance(q, tuple) else (q, None) for q in queued]
    if isinstance(calls, LoopCalls):
        futures = [calls.run(call, hint) for call, hint in pairs]
        meanwhile(futures)
        return futures
    gate = Gate()
    first = calls.run(gate)
    await gate.entered()
    futures = [calls.run(call, hint) for call, hint in pairs]
    meanwhile(futures)
    gate.release.set()
    assert await asyncio.wait_for(first, 10) == "gate"
    return futures
