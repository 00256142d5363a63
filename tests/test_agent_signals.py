"""A stopping signal is known on every thread of an agent the moment it arrives, before Python
runs its handler on the main thread: a trial that the same signal reached is then taken for cut
short, not for failed or finished by itself.

Real parts: a Python process, its threads, and a real SIGTERM it sends itself.
"""

from __future__ import annotations

import subprocess
import sys

# The main thread holds SIGTERM blocked, so the signal reaches the other thread, and the handler
# (which runs on the main thread only) waits until the main thread unblocks it.
SCRIPT = """
import os, signal, threading, time
from sweeper.agents.signalled import stopping_signal, watching

signal.signal(signal.SIGTERM, lambda *_: print("handler ran", flush=True))
seen = threading.Event()
blocked = threading.Event()

def look():
    blocked.wait(20)
    print("before:", stopping_signal(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while stopping_signal() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    print("seen:", stopping_signal(), flush=True)
    seen.set()

with watching():
    looker = threading.Thread(target=look)
    looker.start()  # before the block, which a thread started after it would share
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    blocked.set()
    seen.wait(20)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    looker.join()
    print("still:", stopping_signal(), flush=True)
print("after:", stopping_signal(), flush=True)
"""


def test_every_thread_sees_a_stopping_signal_before_its_handler_has_run() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "before: None",
        "seen: interrupted (SIGTERM)",
        "handler ran",
        "still: interrupted (SIGTERM)",
        "after: None",
    ], done.stdout + done.stderr


def test_a_process_with_a_wakeup_fd_of_its_own_keeps_it() -> None:
    script = """
import signal, socket
from sweeper.agents.signalled import stopping_signal, watching
mine, _other = socket.socketpair()
mine.setblocking(False)
signal.set_wakeup_fd(mine.fileno())
with watching():
    assert signal.set_wakeup_fd(mine.fileno()) == mine.fileno()  # still its own
    print(stopping_signal())
print(signal.set_wakeup_fd(-1) == mine.fileno())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "True"]
