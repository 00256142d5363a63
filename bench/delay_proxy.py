"""A TCP proxy that delays what it forwards: a database on another machine, for the load benchmark.

    python bench/delay_proxy.py TARGET_HOST TARGET_PORT DELAY_MS

Every chunk of bytes goes on DELAY_MS after it arrived, in each direction, in order, so a round
trip through it takes twice DELAY_MS more (plus the proxy's own hop). Threads and sleeps rather
than an event loop: loops time their timers in whole milliseconds. It listens on a free port of
127.0.0.1 and prints ``ready PORT`` once it does.
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


class _Connection:
    """A client's connection and the proxy's own to the target, closed once both directions end."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._open_directions = 2
        self._lock = threading.Lock()

    def direction_ended(self) -> None:
        with self._lock:
            self._open_directions -= 1
            if self._open_directions:
                return
        for sock in self.sockets:
            sock.close()

    def broken(self) -> None:
        """A send failed: the peer is gone, so both directions end (their reads fail now)."""
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _forward(source: socket.socket, target: socket.socket, delay: float, connection: _Connection) -> None:
    """Bytes from ``source`` to ``target``, each chunk ``delay`` seconds after it arrived."""
    held: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send_when_due() -> None:
        try:
            while True:
                due, data = held.get()
                if not data:
                    target.shutdown(socket.SHUT_WR)  # the source's end of stream, passed on
                    return
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                target.sendall(data)
        except OSError:
            connection.broken()
        finally:
            connection.direction_ended()

    threading.Thread(target=send_when_due, daemon=True).start()
    try:
        while data := source.recv(1 << 16):
            held.put((time.monotonic() + delay, data))
    except OSError:
        pass
    held.put((0.0, b""))


def _serve(host: str, port: int, delay: float) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    print("ready", server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((host, port))
        except OSError:  # the target refuses: so does the proxy, for this connection only
            client.close()
            continue
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(client, upstream)
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=_forward, args=(source, target, delay, connection), daemon=True).start()


@contextmanager
def delayed(host: str, port: int, delay_ms: float) -> Iterator[int]:
    """This proxy in a process of its own, in front of ``host:port``, until the block ends; yields
    the port it listens on (on 127.0.0.1)."""
    proxy = subprocess.Popen(
        [sys.executable, __file__, host, str(port), str(delay_ms)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proxy.stdout is not None
        ready = proxy.stdout.readline().split()
        proxy.stdout.close()
        if len(ready) != 2 or ready[0] != "ready":
            raise RuntimeError("the delaying proxy did not start")
        yield int(ready[1])
    finally:
        proxy.terminate()
        proxy.wait()


if __name__ == "__main__":
    target_host, target_port, delay_ms = sys.argv[1:4]
    _serve(target_host, int(target_port), float(delay_ms) / 1000)
