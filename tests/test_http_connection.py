"""The agent's HTTP/1.1 connection against a real TCP server that answers with given bytes: the
answers a server or a proxy in front of it may send, and the faults, as http.client names them."""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from server_helpers import make_certificate

from sweeper.client import CoordinatorUnavailableError, HttpCoordinator
from sweeper.http_connection import HttpConnection

Answer = Callable[[bytes], bytes | None]  # the request's bytes -> the answer's (None: close, unanswered)


class Reset(bytes):
    """An answer after which the server resets the connection (RST, not an orderly close)."""


@dataclass
class RawServer:
    """Reads each request whole (head, then Content-Length bytes of body) and writes back what
    ``answer`` gives; a connection ends when the client closes it or the answer is followed by
    a close (``close_after``). ``trickle``: each answer goes one byte per packet, so the client
    reads it in as many pieces; ``tls``: a server context to wrap each connection in."""

    answer: Answer
    close_after: bool = False
    trickle: bool = False
    tls: ssl.SSLContext | None = None
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection number, request)
    port: int = 0

    def serve(self, listener: socket.socket) -> None:
        number = 0
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            number += 1
            threading.Thread(target=self._connection, args=(conn, number), daemon=True).start()

    def _connection(self, conn: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._requests(conn, number)
        except OSError:  # the client closed the connection with an answer unread: as it should
            pass

    def _requests(self, conn: socket.socket, number: int) -> None:
        with conn:
            reader = conn.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                lengths = [h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length:")]
                length = int(lengths[0].split(b":")[1]) if lengths else 0
                request = head + reader.read(length)
                self.requests.append((number, request))
                answer = self.answer(request)
                if answer is None:
                    return
                if self.trickle:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for i in range(len(answer)):
                        conn.sendall(answer[i : i + 1])
                else:
                    conn.sendall(answer)
                if isinstance(answer, Reset):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if self.close_after:
                    conn.shutdown(socket.SHUT_WR)
                    return


Start = Callable[..., RawServer]  # start(answer, close_after=False, ...): a server on a free port


@pytest.fixture
def raw_server() -> Iterator[Start]:
    listeners: list[socket.socket] = []

    def start(
        answer: Answer,
        close_after: bool = False,
        host: str = "127.0.0.1",
        trickle: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> RawServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, 0), family=family)
        listeners.append(listener)
        server = RawServer(answer, close_after, trickle, tls, port=listener.getsockname()[1])
        threading.Thread(target=server.serve, args=(listener,), daemon=True).start()
        return server

    yield start
    for listener in listeners:
        listener.close()


def fixed(raw: bytes) -> Answer:
    return lambda request: raw


def ok_json(body: bytes = b'{"status": "ok"}', extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


OPENED: list[HttpConnection] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def connection(port: int, timeout: float = 5, connect_timeout: float = 5) -> HttpConnection:
    conn = HttpConnection("127.0.0.1", port, timeout=timeout, connect_timeout=connect_timeout, context=None)
    OPENED.append(conn)
    return conn


def test_a_request_is_sent_as_http_1_1_with_its_length(raw_server: Start) -> None:
    server = raw_server(fixed(ok_json()))
    conn = connection(server.port)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer t"}
    status, reason, body, keep = conn.exchange("POST", "/api/v1/sweeps", b'{"a": 1}', headers)
    assert (status, reason, body, keep) == (200, "OK", b'{"status": "ok"}', True)
    head, _, sent_body = server.requests[0][1].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/sweeps HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Content-Length: 8" in lines and b"Authorization: Bearer t" in lines
    assert sent_body == b'{"a": 1}'
    # A POST without a body still says its length; a GET says nothing of one.
    conn.exchange("POST", "/x", None, {})
    conn.exchange("GET", "/y", None, {})
    assert b"Content-Length: 0" in server.requests[1][1]
    assert b"content-length" not in server.requests[2][1].lower()
    assert [number for number, _ in server.requests] == [1, 1, 1]  # one connection, kept open


@pytest.mark.parametrize("trickle", [False, True])
def test_chunked_answers_are_put_together(raw_server: Start, trickle: bool) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n6\r\n: 123}\r\n0\r\nTrailer: x\r\n\r\n'
    )
    server = raw_server(fixed(chunked), trickle=trickle)
    conn = connection(server.port)
    for _ in range(2):  # the whole answer was read: the connection serves the next request
        assert conn.exchange("GET", "/", None, {})[2:] == (b'{"a": 123}', True)
    assert [number for number, _ in server.requests] == [1, 1]


def test_interim_answers_are_skipped(raw_server: Start) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    server = raw_server(fixed(interim + ok_json()))
    assert connection(server.port).exchange("GET", "/", None, {})[:3] == (200, "OK", b'{"status": "ok"}')


@pytest.mark.parametrize(
    ("answer", "keep"),
    [
        (ok_json(extra=b"Connection: close\r\n"), False),
        (ok_json(extra=b"Connection: Keep-Alive, Close\r\n"), False),
        (ok_json().replace(b"HTTP/1.1", b"HTTP/1.0"), False),
        (ok_json(extra=b"Connection: keep-alive\r\n").replace(b"HTTP/1.1", b"HTTP/1.0"), True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
    ],
)
def test_whether_the_connection_stays_open(raw_server: Start, answer: bytes, keep: bool) -> None:
    server = raw_server(fixed(answer))
    assert connection(server.port).exchange("GET", "/", None, {})[3] is keep


def test_a_body_without_a_length_ends_with_the_connection(raw_server: Start) -> None:
    server = raw_server(fixed(b"HTTP/1.1 200 OK\r\n\r\nall of it"), close_after=True)
    assert connection(server.port).exchange("GET", "/", None, {})[2:] == (b"all of it", False)


def test_the_transport_follows_what_the_server_says_of_the_connection(raw_server: Start) -> None:
    close_every_other = iter([b"", b"Connection: close\r\n"] * 3)
    server = raw_server(lambda request: ok_json(extra=next(close_every_other)))
    client = HttpCoordinator(f"http://127.0.0.1:{server.port}")
    for _ in range(6):
        assert client.health() == {"status": "ok"}
    # Two answers per connection: kept after the first, closed after the second.
    assert [number for number, _ in server.requests] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (None, http.client.RemoteDisconnected),  # closed without an answer
        (b"SSH-2.0-OpenSSH_9.6\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 2000 OK\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 099 Early\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 1\xb20 OK\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 OK\r\n", http.client.IncompleteRead),  # the head cut off
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", http.client.HTTPException),
        (b"HTTP/2.0 200 OK\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", http.client.IncompleteRead),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", http.client.LineTooLong),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http.client.HTTPException),
    ],
)
def test_broken_answers_raise_what_http_client_raises(
    raw_server: Start, answer: bytes | None, error: type[Exception]
) -> None:
    server = raw_server(lambda request: answer, close_after=True)
    with pytest.raises(error) as raised:
        connection(server.port).exchange("GET", "/", None, {})
    assert raised.type is error


def test_broken_answers_reach_the_caller_as_an_unreachable_coordinator(raw_server: Start) -> None:
    server = raw_server(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), close_after=True)
    with pytest.raises(CoordinatorUnavailableError, match="unreachable"):
        HttpCoordinator(f"http://127.0.0.1:{server.port}").health()


@pytest.mark.parametrize(
    ("target", "headers", "error"),
    [
        ("/a b", {}, http.client.InvalidURL),
        ("/a\r\nX: y", {}, http.client.InvalidURL),
        ("no-slash", {}, http.client.InvalidURL),
        ("/", {"Authorization": "Bearer t\r\nX-Injected: 1"}, ValueError),
        ("/\u00e9", {}, http.client.InvalidURL),
        ("/", {"Bad:Name": "v"}, ValueError),
        ("/", {" Folded": "v"}, ValueError),
        ("/", {"X": "a\rb"}, ValueError),
        ("/", {"Host": "elsewhere"}, ValueError),
    ],
)
def test_requests_that_would_break_the_protocol_are_not_sent(
    raw_server: Start, target: str, headers: dict[str, str], error: type[Exception]
) -> None:
    server = raw_server(fixed(ok_json()))
    with pytest.raises(error):
        connection(server.port).exchange("GET", target, None, headers)
    assert server.requests == []


def test_answers_without_a_body_leave_the_next_answer_intact(raw_server: Start) -> None:
    """A 304 or a HEAD answer says a length but has no body: reading one would take the next
    answer's bytes."""
    head_answer = ok_json().partition(b"\r\n\r\n")[0] + b"\r\n\r\n"  # its length, without its body
    answers = iter([b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", head_answer, ok_json()])
    server = raw_server(lambda request: next(answers))
    conn = connection(server.port, timeout=2)
    assert conn.exchange("GET", "/", None, {}) == (304, "Not Modified", b"", True)
    assert conn.exchange("HEAD", "/", None, {}) == (200, "OK", b"", True)
    assert conn.exchange("GET", "/", None, {})[2] == b'{"status": "ok"}'


def test_bytes_past_an_answer_are_never_the_next_answer(raw_server: Start) -> None:
    stale = b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"stale": 1}'
    answers = iter([ok_json(b"{}") + stale, ok_json()])
    server = raw_server(lambda request: next(answers))
    client = HttpCoordinator(f"http://127.0.0.1:{server.port}")
    assert client.health() == {}
    assert client.health() == {"status": "ok"}  # asked again, on a new connection
    assert [number for number, _ in server.requests] == [1, 2]


def test_a_slow_answer_times_out_by_the_read_timeout(raw_server: Start) -> None:
    release = threading.Event()
    server = raw_server(lambda request: ok_json() if release.wait(10) else None)
    conn = connection(server.port, timeout=0.3, connect_timeout=10)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.exchange("GET", "/", None, {})
    assert time.monotonic() - started < 5  # the 0.3 s read timeout, not the 10 s connect timeout
    release.set()


def test_requests_go_without_delay(raw_server: Start) -> None:
    conn = connection(raw_server(fixed(ok_json())).port)
    conn.connect()
    assert conn.sock is not None and conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


CHUNKED_WITH_LENGTH = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "body", "keep"),
    [
        # Repeated fields are joined: the close is heard in either order, and folded lines too.
        (ok_json(b"{}", b"Connection: close\r\nConnection: keep-alive\r\n"), b"{}", False),
        (ok_json(b"{}", b"Connection: keep-alive,\r\n close\r\n"), b"{}", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", b"{}", True),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 99 + b"Content-Length: 2\r\n\r\n{}",
            b"{}",
            True,
        ),  # 100 fields
        # Transfer-Encoding overrides a length; with both, the connection is not used again.
        (CHUNKED_WITH_LENGTH, b"{}", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\nab", b"ab", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nab", b"2\r\nab", False),
    ],
)
@pytest.mark.parametrize("trickle", [False, True])
def test_header_fields_as_servers_send_them(
    raw_server: Start, answer: bytes, body: bytes, keep: bool, trickle: bool
) -> None:
    server = raw_server(fixed(answer), close_after=True, trickle=trickle)
    assert connection(server.port).exchange("GET", "/", None, {})[2:] == (body, keep)


def _ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_host_is_named_in_brackets(raw_server: Start) -> None:
    server = raw_server(fixed(ok_json()), host="::1")
    conn = HttpConnection("::1", server.port, timeout=5, connect_timeout=5, context=None)
    OPENED.append(conn)
    conn.exchange("GET", "/", None, {})
    assert f"Host: [::1]:{server.port}\r\n".encode() in server.requests[0][1]


def test_large_answers_in_many_pieces(raw_server: Start) -> None:
    big = b"x" * 200_000
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
    answers = iter([ok_json(big), chunked])
    server = raw_server(lambda request: next(answers))
    conn = connection(server.port)
    assert conn.exchange("GET", "/", None, {})[2:] == (big, True)
    assert conn.exchange("GET", "/", None, {})[2:] == (big, True)


def test_a_request_is_one_write(raw_server: Start) -> None:
    conn = connection(raw_server(fixed(ok_json())).port)
    conn.connect()
    real = conn.sock
    assert real is not None
    writes: list[bytes] = []

    class Counting:  # the real socket, its writes noted
        def sendall(self, data: bytes) -> None:
            writes.append(data)
            real.sendall(data)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    conn.sock = Counting()  # type: ignore[assignment]
    conn.exchange("POST", "/x", b'{"a": 1}', {"Content-Type": "application/json"})
    assert len(writes) == 1 and writes[0].endswith(b'\r\n\r\n{"a": 1}')


def test_an_answer_cut_off_is_not_asked_again(raw_server: Start) -> None:
    """The server read the request and began to answer: sent again, it would run twice (a second
    trial leased, a trial ended twice)."""
    answers = iter([ok_json(), Reset(ok_json()[:-5])])
    server = raw_server(lambda request: next(answers))
    client = HttpCoordinator(f"http://127.0.0.1:{server.port}")
    assert client.health() == {"status": "ok"}
    with pytest.raises(CoordinatorUnavailableError, match="IncompleteRead"):
        client.health()
    assert len(server.requests) == 2


def test_a_request_the_server_closed_on_unanswered_is_sent_again(raw_server: Start) -> None:
    answers = iter([ok_json(), None, ok_json(b"{}")])
    server = raw_server(lambda request: next(answers))
    client = HttpCoordinator(f"http://127.0.0.1:{server.port}")
    assert client.health() == {"status": "ok"}
    assert client.health() == {}  # the kept connection closed unanswered: sent once more, on a new one
    assert [number for number, _ in server.requests] == [1, 1, 2]


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context that trusts it."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_tls(raw_server: Start, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    server = raw_server(fixed(ok_json()), trickle=True, tls=server_context)
    conn = HttpConnection("127.0.0.1", server.port, timeout=5, connect_timeout=5, context=client_context)
    OPENED.append(conn)
    for _ in range(2):
        assert conn.exchange("GET", "/", None, {})[2:] == (b'{"status": "ok"}', True)
    assert [number for number, _ in server.requests] == [1, 1]
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in server.requests[0][1]


def test_tls_checks_the_name(raw_server: Start, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts
    try:  # an address the certificate does not name (all of 127/8 is this machine's on Linux)
        server = raw_server(fixed(ok_json()), host="127.0.0.2", tls=server_context)
    except OSError:
        pytest.skip("no 127.0.0.2 here")
    wrong = HttpConnection("127.0.0.2", server.port, timeout=5, connect_timeout=5, context=client_context)
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.exchange("GET", "/", None, {})
    assert wrong.sock is None and server.requests == []
