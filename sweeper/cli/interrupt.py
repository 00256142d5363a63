"""Ctrl-C and SIGTERM for commands that run local agents (``sweeper run``, ``sweeper agent``).

The first signal stops every running trial (SIGTERM to its process group, SIGKILL after the
grace period) and records it as stopped; further signals only say that this is under way.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Protocol

import click

EXIT_INTERRUPTED = 130


class Stoppable(Protocol):
    def start(self) -> None: ...

    def wait(self) -> list[str]: ...

    def stop(self, reason: str) -> None: ...


class sigterm_as_interrupt:
    """SIGTERM stops the command as cleanly as Ctrl-C does (main thread only)."""

    def __enter__(self) -> None:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_until_done_or_interrupted(agents: Stoppable, grace: float) -> tuple[list[str], bool]:
    """Start the agents and wait for them; returns (their exit reasons, whether a signal stopped them)."""
    with sigterm_as_interrupt():
        try:
            agents.start()
            return agents.wait(), False
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: stopping running trials (SIGKILL after {grace:g}s)...", err=True)
            agents.stop("interrupted by the user (Ctrl-C)")
            return _wait_ignoring_interrupts(agents), True


def _wait_ignoring_interrupts(agents: Stoppable) -> list[str]:
    while True:
        try:
            return agents.wait()
        except KeyboardInterrupt:
            click.echo("still stopping trials; they are killed when the grace period ends", err=True)
