"""Ctrl-C, SIGTERM and SIGHUP for commands that run local agents (``sweeper run``, ``sweeper agent``).

The first signal stops every running trial (SIGTERM to its process group, SIGKILL after the
grace period) and records it as lost, to run again; a second Ctrl-C kills their processes at once
(SIGKILL), for a person who will not wait for the grace period (a second SIGTERM or SIGHUP only
says that the stop is under way).
SIGHUP (the terminal or ssh session went away) counts too: by default it would end the agent at
once and leave its trials running, unwatched, on the GPUs, while their configurations run again
elsewhere once the leases run out.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Any, Protocol

import click

from sweeper.agents.signalled import watching
from sweeper.protocol import interrupted_reason

EXIT_INTERRUPTED = 130


class Stoppable(Protocol):
    def start(self) -> None: ...

    def wait(self) -> list[str]: ...

    def stop(self, reason: str) -> None: ...

    def hurry(self) -> None: ...


_STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class signals_as_interrupt:
    """SIGTERM and SIGHUP stop the command as cleanly as Ctrl-C does (main thread only)."""

    def __enter__(self) -> None:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in _STOPPING_SIGNALS:
                if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # started under nohup: a hangup is to be ignored, as asked
                self._previous[signum] = signal.signal(signum, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_until_done_or_interrupted(agents: Stoppable, grace: float) -> tuple[list[str], bool]:
    """Start the agents and wait for them; returns (their exit reasons, whether a signal stopped them)."""
    with signals_as_interrupt(), watching():  # the agents' threads see a signal before its handler runs
        try:
            agents.start()
            return agents.wait(), False
        except KeyboardInterrupt as interrupt:
            # Stop first: after a hangup, writing to the terminal fails.
            how = interrupt.args[0] if interrupt.args else "Ctrl-C"  # the signal's name, if one sent it
            agents.stop(interrupted_reason(how))
            now = "; Ctrl-C again kills them now" if not interrupt.args else ""
            _say(f"\ninterrupted: stopping running trials (SIGKILL after {grace:g}s{now})...")
            return _wait_for_stopped_trials(agents), True


def _wait_for_stopped_trials(agents: Stoppable) -> list[str]:
    hurried = False
    while True:
        try:
            return agents.wait()
        except KeyboardInterrupt as again:
            if again.args:  # SIGTERM or SIGHUP, which schedulers and terminals send, not people
                _say("still stopping trials; they are killed when the grace period ends")
            elif not hurried:
                hurried = True
                agents.hurry()
                _say("killing the trials' processes now (SIGKILL)")


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        click.echo(line, err=True)
