"""Whether a signal that stops the agent (SIGTERM, SIGHUP, Ctrl-C) has reached this process,
known on every thread the moment it arrives.

Python runs a signal's handler on the main thread only, and only once that thread next runs
Python code: it may be asleep in a wait, or waiting for the GIL behind a dozen busy threads.
Meanwhile a trial that the same signal reached (Slurm signals every process of a job at once)
may have exited, and its slot's thread would take that exit for the trial's own doing: a
failure, or a result. So the command that runs agents has the interpreter write each signal's
number to a socket as it arrives (``signal.set_wakeup_fd``), which any thread can look at
without taking it away.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

from sweeper.protocol import interrupted_reason

# The signals that stop an agent, as its stop reasons name them.
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
_reader: socket.socket | None = None


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Within, :func:`stopping_signal` tells whether one of those signals has arrived (main
    thread only; elsewhere, and where the process has its own wakeup fd, it tells nothing)."""
    if threading.current_thread() is not threading.main_thread() or _reader is not None:
        yield
        return
    watch = None
    try:
        with _held():  # a signal meanwhile would find the watch half set up, or half taken down
            watch = _start()
        yield
    finally:
        if watch is not None:
            with _held():
                _stop(*watch)


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """The stopping signals wait (delivered once this ends) while the watch changes."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _NAMES)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start() -> tuple[socket.socket, socket.socket] | None:
    global _reader
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous != -1:  # someone else's (an event loop's): theirs to keep, and no watch here
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        return None
    _reader = reader
    return reader, writer


def _stop(reader: socket.socket, writer: socket.socket) -> None:
    global _reader
    signal.set_wakeup_fd(-1)
    _reader = None
    reader.close()
    writer.close()


def stopping_signal() -> str | None:
    """The stop reason of the first stopping signal that has arrived, or None."""
    reader = _reader
    if reader is None:
        return None
    try:
        arrived = reader.recv(4096, socket.MSG_PEEK)  # left there, for every thread to see
    except OSError:  # nothing yet (BlockingIOError), or closed meanwhile
        return None
    for number in arrived:
        if number in _NAMES:
            return interrupted_reason(_NAMES[number])
    return None
