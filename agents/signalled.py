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
    global _reader
    if threading.current_thread() is not threading.main_thread() or _reader is not None:
        yield
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous != -1:  # someone else's (an event loop): theirs to keep
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        yield
        return
    _reader = reader
    try:
        yield
    finally:
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
