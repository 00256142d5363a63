"""Watching real processes from the tests: whether one still runs, and waiting for a condition."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@functools.cache
def dead_pid() -> int:
    """The process id of a process that has ended."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def written_by(spool: Any, **owner: Any) -> None:
    """Make ``spool`` (a :class:`~sweeper.agents.spool.Spool`) one whose header names another
    agent: ``agent_pid``, ``host``, ``pid_ns`` given replace this process's."""
    lines = spool.path.read_text().splitlines(keepends=True)
    spool.path.write_text(json.dumps({**json.loads(lines[0]), **owner}) + "\n" + "".join(lines[1:]))


def left_by_a_dead_agent(spool: Any) -> None:
    """Make ``spool`` one that an agent of this machine that has died since left (the spools of
    this process's own trials are in use, never leftovers)."""
    written_by(spool, agent_pid=dead_pid())
