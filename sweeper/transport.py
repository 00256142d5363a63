"""HTTP exchanges with the coordinator, over kept-alive connections. Standard library only.

An agent makes a request every few seconds per trial (heartbeats, metric reports); a new TCP
(and TLS) connection for each one costs both sides more than the request itself. Connections
are kept open between requests and shared by the client's threads, one request at a time each.

A kept connection may have been closed by the server meanwhile (its idle timeout, a restart).
Such a connection is dropped before use when the socket already shows the close, and a request
that fails on a reused connection before any answer arrived is sent once more on a new one: the
server closed it without reading the request. Each connection is a
:class:`~sweeper.http_connection.HttpConnection` (a request in one write, a lean reading of the
answer). Where an HTTP proxy is configured (``HTTP_PROXY`` and friends), requests go through
urllib instead, one connection each.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Protocol

from sweeper.http_connection import HttpConnection, is_request_target

_MAX_IDLE = 16  # connections kept per client: as many as threads calling at once, in practice
# Failures of a reused connection that mean "closed before the request was read".
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

Answer = tuple[int, str, bytes]  # status, reason phrase, body


CONNECT_TIMEOUT = 10.0  # seconds to open a connection, whatever a call's timeout


class Transport(Protocol):
    def exchange(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        """Send one request (``target``: the path below the base URL); raises OSError or
        http.client.HTTPException when no answer arrived."""
        ...

    def close(self) -> None:
        """Close the connections kept for later requests; a later request opens a new one. A
        connection in use by a request meanwhile is kept once its answer is read."""
        ...


def transport_for(url: str, *, timeout: float, context: ssl.SSLContext | None) -> Transport:
    parts = urllib.parse.urlsplit(url)
    if _proxied(parts):
        return UrllibTransport(url, timeout=timeout, context=context)
    return KeepAliveTransport(parts, timeout=timeout, context=context)


def _proxied(parts: urllib.parse.SplitResult) -> bool:
    proxy = urllib.request.getproxies().get(parts.scheme)
    return bool(proxy) and not urllib.request.proxy_bypass(parts.netloc)


class KeepAliveTransport:
    def __init__(
        self, parts: urllib.parse.SplitResult, *, timeout: float, context: ssl.SSLContext | None
    ) -> None:
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        if self._prefix and not is_request_target(self._prefix):
            raise ValueError(f"the coordinator URL's path must be printable ASCII, got {parts.path!r}")
        self._timeout = timeout
        self._context = context
        self._idle: list[HttpConnection] = []
        self._lock = threading.Lock()

    def exchange(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        conn, reused = self._take()
        try:
            return self._send(conn, method, target, body, headers)
        except _STALE:
            conn.close()
            if not reused:
                raise
        except BaseException:
            conn.close()
            raise
        conn = self._connect()
        try:
            return self._send(conn, method, target, body, headers)
        except BaseException:
            conn.close()
            raise

    def _send(
        self, conn: HttpConnection, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> Answer:
        status, reason, raw, keep = conn.exchange(method, self._prefix + target, body, headers)
        if keep:  # else the connection closed itself
            self._give(conn)
        return status, reason, raw

    def _take(self) -> tuple[HttpConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            if _still_open(conn):
                return conn, True
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _give(self, conn: HttpConnection) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> HttpConnection:
        # A host that drops packets is given up on in CONNECT_TIMEOUT; an answer may take longer
        # (a large sweep's listing), up to the transport's own timeout.
        conn = HttpConnection(
            self._host,
            self._port,
            timeout=self._timeout,
            connect_timeout=min(self._timeout, CONNECT_TIMEOUT),
            context=self._context,
        )
        conn.connect()
        return conn


def _still_open(conn: HttpConnection) -> bool:
    """False when the server closed an idle connection (or sent something unasked): readable
    before any request means end of stream, or garbage."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):  # select.select cannot watch descriptors past 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        return not select.select([sock], [], [], 0)[0]
    except (OSError, ValueError):
        return False


class UrllibTransport:
    """One connection per request, through the proxies urllib reads from the environment."""

    def __init__(self, url: str, *, timeout: float, context: ssl.SSLContext | None) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout
        self._context = context

    def close(self) -> None:
        pass  # each request's connection closes with its answer

    def exchange(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        request = urllib.request.Request(f"{self._url}{target}", data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as response:
                return response.status, response.reason, response.read()
        except urllib.error.HTTPError as exc:  # a refusal: an answer, not a failure
            try:
                raw = exc.read()
            except OSError:
                raw = b""
            return exc.code, str(exc.reason), raw
