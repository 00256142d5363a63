"""One kept-alive HTTP/1.1 connection: a request in one write, its answer read in a few steps.
Standard library only.

An agent's calls are small JSON requests and answers, and on a busy machine their cost is the
client's CPU and each packet's wake-up of the other side. http.client sends a request's head
and body in two writes (two packets: two wake-ups of the server) and parses every answer's
headers with the email package; that was most of an agent's CPU per call. This speaks what
the coordinator's calls need, and what a proxy in front of it may answer: bodies by
Content-Length, chunked or up to the close; interim 1xx answers skipped; the Connection header.
Faults raise what http.client raises (RemoteDisconnected for a connection closed before any
answer, IncompleteRead, LineTooLong, ...), and OSError from the socket, timeouts included.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from typing import BinaryIO

_MAX_LINE = 65536  # as http.client: a longer status or header line is refused
_MAX_HEADERS = 100
_NO_BODY_STATUS = (204, 304)
_NOT_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # control characters and spaces


class HttpConnection:
    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        timeout: float,
        connect_timeout: float,
        context: ssl.SSLContext | None,
    ) -> None:
        """``timeout``: the most seconds any read or write waits; ``connect_timeout``: for the
        connection (and TLS handshake) alone; ``context``: TLS, or None for plain HTTP."""
        default_port = 443 if context is not None else 80
        self.host = host
        self.port = port or default_port
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._context = context
        shown = f"[{host}]" if ":" in host else host
        self._host_header = shown if self.port == default_port else f"{shown}:{self.port}"
        self.sock: socket.socket | None = None
        self._reader: BinaryIO | None = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each request is one write
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self._timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        reader, sock = self._reader, self.sock
        self._reader = self.sock = None
        if reader is not None:
            reader.close()
        if sock is not None:
            sock.close()

    def exchange(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes, bool]:
        """Send one request, read its answer: status, reason phrase, body, and whether the
        connection stays open for another request."""
        request = self._head(method, target, body, headers) + (body or b"")
        if self.sock is None:
            self.connect()
        assert self.sock is not None and self._reader is not None
        self.sock.sendall(request)
        return _read_answer(self._reader, method)

    def _head(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        if not target.startswith("/") or _NOT_IN_TARGET.search(target):
            raise http.client.InvalidURL(f"URL can't contain control characters or spaces: {target!r}")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"invalid HTTP header {name!r}: no line breaks, and no ':' in its name")
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")


def _read_answer(reader: BinaryIO, method: str) -> tuple[int, str, bytes, bool]:
    while True:  # interim answers (100 Continue, 103 Early Hints) come before the answer
        version, status, reason = _status_line(reader)
        headers = _headers(reader)
        if not 100 <= status < 200:
            break
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    keep = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    if method == "HEAD" or status in _NO_BODY_STATUS:
        return status, reason, b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, reason, _chunked(reader), keep
    length = headers.get("content-length")
    if length is None:  # the body ends where the connection does
        return status, reason, reader.read(), False
    if not length.isdigit():
        raise http.client.HTTPException(f"invalid Content-Length {length!r}")
    return status, reason, _exactly(reader, int(length)), keep


def _line(reader: BinaryIO, what: str) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong(what)
    return line


def _status_line(reader: BinaryIO) -> tuple[str, int, str]:
    line = _line(reader, "status line")
    if not line:  # closed before any answer: the request was not read (or the server died)
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    version, _, rest = line.decode("iso-8859-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise http.client.BadStatusLine(line.decode("iso-8859-1"))
    return version, int(code), reason.strip()


def _headers(reader: BinaryIO) -> dict[str, str]:
    """The header fields, names in lower case; repeated fields joined with commas."""
    found: dict[str, str] = {}
    last = ""
    for _ in range(_MAX_HEADERS + 1):
        line = _line(reader, "header line")
        if line in (b"\r\n", b"\n", b""):
            return found
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and last:  # an obsolete folded continuation
            found[last] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if not colon:
            raise http.client.HTTPException(f"malformed header line {text!r}")
        last = name.strip().lower()
        value = value.strip()
        found[last] = f"{found[last]}, {value}" if last in found else value
    raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


def _exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _chunked(reader: BinaryIO) -> bytes:
    parts = []
    while True:
        line = _line(reader, "chunk size")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise http.client.IncompleteRead(b"".join(parts))  # cut off, or not a chunk size
        size = int(size_text, 16)
        if size == 0:
            while _line(reader, "trailer line") not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(_exactly(reader, size))
        _line(reader, "chunk end")
