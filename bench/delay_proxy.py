"""A TCP proxy that delays what it forwards: a database on another machine, for the load benchmark.

    python bench/delay_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS

Every chunk of bytes goes on DELAY_MS after it arrived, in each direction, in order, so a round
trip through it takes twice DELAY_MS more (plus the proxy's own hop). Threads and sleeps rather
than an event loop: loops time their timers in whole milliseconds. It prints ``ready`` once it
listens.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _forward(source: socket.socket, target: socket.socket, delay: float) -> None:
    """Bytes from ``source`` to ``target``, each chunk ``delay`` seconds after it arrived."""
    held: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send_when_due() -> None:
        while True:
            due, data = held.get()
            if not data:
                target.shutdown(socket.SHUT_WR)
                return
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            target.sendall(data)

    threading.Thread(target=send_when_due, daemon=True).start()
    try:
        while data := source.recv(1 << 16):
            held.put((time.monotonic() + delay, data))
    except OSError:
        pass
    held.put((0.0, b""))


def _serve(listen: int, host: str, port: int, delay: float) -> None:
    server = socket.create_server(("127.0.0.1", listen))
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection((host, port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=_forward, args=(source, target, delay), daemon=True).start()


@contextmanager
def delayed(listen: int, host: str, port: int, delay_ms: float) -> Iterator[None]:
    """This proxy in a process of its own, on 127.0.0.1:``listen``, until the block ends."""
    proxy = subprocess.Popen(
        [sys.executable, __file__, str(listen), host, str(port), str(delay_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if proxy.stdout is None or proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("the delaying proxy did not start")
        yield
    finally:
        proxy.terminate()
        proxy.wait()


if __name__ == "__main__":
    listen_port, target_host, target_port, delay_ms = sys.argv[1:5]
    _serve(int(listen_port), target_host, int(target_port), float(delay_ms) / 1000)
