"""One kept-alive HTTP/1.1 connection: a request in one write, its answer read in a few steps.
Standard library only.

An agent's calls are small JSON requests and answers, and on a busy machine their cost is the
client's CPU and each packet's wake-up of the other side. http.client sends a request's head
and body in two writes (two packets: two wake-ups of the server) and parses every answer's
headers with the email package; that was most of an agent's CPU per call. This speaks what
the coordinator's calls need, and what a proxy in front of it may answer: bodies by
Content-Length, chunked or up to the close; interim 1xx answers skipped; the Connection header.
Faults raise what http.client raises (IncompleteRead, LineTooLong, BadStatusLine, ...), and
OSError from the socket, timeouts included. A connection closed or reset before any byte of the
answer raises ConnectionResetError (RemoteDisconnected at an orderly close), which the caller may
take for a kept connection the server had dropped, and send the request again; once part of an
answer has come, the server has read the request, and a reset raises IncompleteRead instead, so
the request is never sent twice.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl

_MAX_LINE = 65536  # as http.client: a longer status or header line is refused
_MAX_HEADERS = 100
_NO_BODY_STATUS = (204, 304)
_TARGET = re.compile(r"/[\x21-\x7e]*")  # printable ASCII: no spaces, no control characters
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token (RFC 9110)
_SET_HERE = ("host", "content-length", "transfer-encoding")  # the connection writes these itself
_LENGTH = re.compile(r"[0-9]{1,18}")
_STATUS = re.compile(r"[1-9][0-9]{2}")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


def is_request_target(text: str) -> bool:
    """Whether ``text`` may stand as a request's target (or the path before one)."""
    return _TARGET.fullmatch(text) is not None


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
        shown = f"[{host}]" if ":" in host else host if host.isascii() else host.encode("idna").decode()
        self._host_header = shown if self.port == default_port else f"{shown}:{self.port}"
        self.sock: socket.socket | None = None
        self._reader: _Reader | None = None

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
        self._reader = _Reader(sock)

    def close(self) -> None:
        sock, self.sock, self._reader = self.sock, None, None
        if sock is not None:
            sock.close()

    def exchange(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes, bool]:
        """Send one request, read its answer: status, reason phrase, body, and whether the
        connection stays open for another request (if not, it is closed already)."""
        request = self._head(method, target, body, headers) + (body or b"")
        if self.sock is None:
            self.connect()
        assert self.sock is not None and self._reader is not None
        try:
            self.sock.sendall(request)
        except ssl.SSLEOFError as exc:  # TLS's way of saying the server closed the connection
            raise ConnectionResetError(str(exc)) from exc
        reader = self._reader
        reader.received = 0
        try:
            status, reason, body, keep = _read_answer(reader, method)
        except (ConnectionError, ssl.SSLEOFError) as exc:
            if reader.received:  # part of an answer came: the request was read, not to be sent again
                raise http.client.IncompleteRead(b"") from exc
            if isinstance(exc, ConnectionError):
                raise
            raise ConnectionResetError(str(exc)) from exc  # closed before any answer
        # Bytes past the answer's end mean a server (or proxy) that frames its answers wrongly:
        # they must never be read as the next request's answer.
        if keep and not reader.pending():
            return status, reason, body, True
        self.close()
        return status, reason, body, False

    def _head(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        if not is_request_target(target):
            raise http.client.InvalidURL(
                f"a request target is '/' and printable ASCII, without spaces: got {target!r}"
            )
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            broken_value = "\r" in value or "\n" in value
            if broken_value or not _HEADER_NAME.fullmatch(name) or name.lower() in _SET_HERE:
                raise ValueError(
                    f"invalid HTTP header {name!r}: a name is a token other than Host, Content-Length "
                    "and Transfer-Encoding, and a value has no line breaks"
                )
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")


class _Reader:
    """The bytes received and not yet read: whether an answer left any behind is known."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.received = 0  # bytes received, since this was last set to 0

    def pending(self) -> bool:
        return bool(self._buffer)

    def _fill(self) -> bool:
        """False at the end of the stream."""
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        self.received += len(chunk)
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        with memoryview(self._buffer) as view:  # one copy of a large body, not two
            taken = bytes(view[:size])
        del self._buffer[:size]
        return taken

    def readline(self, limit: int) -> bytes:
        """A line with its end; at most ``limit`` bytes of a longer one; what is left at the end."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) >= limit:
                return self._take(limit)
            searched = len(self._buffer)
            if not self._fill():
                return self._take(len(self._buffer))

    def read(self, size: int) -> bytes:
        """``size`` bytes, or fewer where the stream ends first."""
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def read_all(self) -> bytes:
        while self._fill():
            pass
        return self._take(len(self._buffer))


def _read_answer(reader: _Reader, method: str) -> tuple[int, str, bytes, bool]:
    while True:  # interim answers (100 Continue, 103 Early Hints) come before the answer
        version, status, reason = _status_line(reader)
        headers = _headers(reader)
        if not 100 <= status < 200:
            break
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    keep = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    if method == "HEAD" or status in _NO_BODY_STATUS:
        return status, reason, b"", keep
    length = headers.get("content-length")
    if "transfer-encoding" in headers:  # it overrides any length (RFC 9112, 6.3)
        codings = [c.strip() for c in headers["transfer-encoding"].lower().split(",")]
        if codings[-1] != "chunked":  # the body ends where the connection does
            return status, reason, reader.read_all(), False
        # An answer with both may be smuggled through a proxy: not a connection to use again.
        return status, reason, _chunked(reader), keep and length is None
    if length is None:  # the body ends where the connection does
        return status, reason, reader.read_all(), False
    lengths = {value.strip() for value in length.split(",")}  # repeated, it must say one length
    size = lengths.pop() if len(lengths) == 1 else ""
    if not _LENGTH.fullmatch(size):
        raise http.client.HTTPException(f"invalid Content-Length {length!r}")
    return status, reason, _exactly(reader, int(size)), keep


def _line(reader: _Reader, what: str) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong(what)
    return line


def _status_line(reader: _Reader) -> tuple[str, int, str]:
    line = _line(reader, "status line")
    if not line:  # closed before any answer: the request was not read (or the server died)
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    version, _, rest = line.decode("iso-8859-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not _STATUS.fullmatch(code):
        raise http.client.BadStatusLine(line.decode("iso-8859-1"))
    return version, int(code), reason.strip()


def _headers(reader: _Reader) -> dict[str, str]:
    """The header fields, names in lower case; repeated fields joined with commas."""
    found: dict[str, str] = {}
    last = ""
    for _ in range(_MAX_HEADERS + 1):
        line = _line(reader, "header line")
        if line in (b"\r\n", b"\n"):
            return found
        if not line:  # the stream ended inside the head: not an answer to act on
            raise http.client.IncompleteRead(b"")
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):  # an obsolete folded continuation
            if not last:
                raise http.client.HTTPException(f"header line {text!r} continues no header")
            found[last] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if not colon:
            raise http.client.HTTPException(f"malformed header line {text!r}")
        last = name.strip().lower()
        value = value.strip()
        found[last] = f"{found[last]}, {value}" if last in found else value
    raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


def _exactly(reader: _Reader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _chunked(reader: _Reader) -> bytes:
    parts = []
    while True:
        line = _line(reader, "chunk size")
        size_text = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise http.client.IncompleteRead(b"".join(parts))  # cut off, or not a chunk size
        size = int(size_text, 16)
        if size == 0:
            while _line(reader, "trailer line") not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(_exactly(reader, size))
        _line(reader, "chunk end")
