"""HttpCoordinator's failure modes on real sockets, connect(), and the light import."""

from __future__ import annotations

import http.server
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import serving

import sweeper
from sweeper.client import CoordinatorError, CoordinatorUnavailableError, HttpCoordinator, WrongSchemeError
from sweeper.connect import connect
from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, CoordinatorService, SweepNotFoundError, TrialOutcome
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import TrialState


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """A server that fails the way real ones do: by path."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if "/sweeps/reset" in self.path:
            self.connection.shutdown(socket.SHUT_RDWR)  # closed without an answer
            return
        if "/sweeps/hang" in self.path:
            self.server.release.wait(30)  # type: ignore[attr-defined]
            return
        status, body = {
            "/api/v1/sweeps/e500": (500, b"Internal Server Error"),
            "/api/v1/sweeps/e503": (503, b'{"code": "store_unavailable", "detail": "database is locked"}'),
            "/api/v1/sweeps/text": (200, b"<html>not json</html>"),
            "/api/v1/sweeps/empty": (200, b""),  # a proxy's answer: nothing where an object belongs
            "/api/v1/sweeps/e418": (418, b'{"code": "teapot", "detail": "short and stout"}'),
        }.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("sweep_id", ["e500", "e503", "reset", "text", "empty"])
def test_server_faults_are_oserrors_the_agent_retries(misbehaving: str, sweep_id: str) -> None:
    with pytest.raises(OSError) as caught:
        HttpCoordinator(misbehaving).get_sweep(sweep_id)
    assert isinstance(caught.value, CoordinatorUnavailableError)


def test_a_silent_server_times_out_as_an_oserror(misbehaving: str) -> None:
    # Not "unreachable": it answered the connection, and a large listing can take a while.
    with pytest.raises(
        OSError, match=r"GET .*/sweeps/hang: no answer within 0.3s \(the coordinator is down or busy"
    ):
        HttpCoordinator(misbehaving, timeout=0.3).get_sweep("hang")


def test_a_refused_connection_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(ConnectionError, match=f"coordinator {url} unreachable"):
            HttpCoordinator(url).next_trial("abc", AgentInfo("a", "h"))


def test_a_server_that_hangs_up_in_plain_tcp_may_be_going_down_not_speaking_tls() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"

        def hang_up() -> None:  # the request, then the TLS handshake: each closed unanswered
            for _ in range(2):
                conn, _ = listening.accept()
                conn.recv(65536)
                conn.close()

        closer = threading.Thread(target=hang_up, daemon=True)
        closer.start()
        with pytest.raises(WrongSchemeError) as caught:
            HttpCoordinator(url).list_sweeps()
        closer.join(10)
    assert not caught.value.certain, "it may come back: the agent waits for it"
    assert "(if that server was started with --ssl-certfile, use an https:// URL)" in str(caught.value)


def test_other_refusals_keep_the_servers_code(misbehaving: str) -> None:
    with pytest.raises(CoordinatorError, match="short and stout") as caught:
        HttpCoordinator(misbehaving).get_sweep("e418")
    assert (caught.value.status, caught.value.code) == (418, "teapot")
    assert not isinstance(caught.value, OSError)  # not worth retrying


def test_bad_urls_and_secret_tokens() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        HttpCoordinator("localhost:8765")
    with pytest.raises(ValueError, match=r"got 'postgresql://sweeper:\*\*\*@db:5432/x'") as caught:
        HttpCoordinator("postgresql://sweeper:hunter2@db:5432/x")  # a store URL given as --coordinator
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="printable ASCII"):
        HttpCoordinator("http://127.0.0.1:1/caf\u00e9")  # each call would be refused as it is sent
    with pytest.raises(
        ValueError, match=r"coordinator URL 'http://\*\*\*@localhost:99999': Port out of range"
    ):
        HttpCoordinator("http://bob:hunter2@localhost:99999")
    # A token written as the URL's user (as https://TOKEN@host carries one) is hidden too.
    with pytest.raises(ValueError, match=r"'http://\*\*\*@host:8765' holds a user or password") as caught:
        HttpCoordinator("http://s3cr3ttoken@host:8765")
    assert "s3cr3ttoken" not in str(caught.value)
    client = HttpCoordinator("http://127.0.0.1:1/", token="s3cret")
    assert "s3cret" not in repr(client) and client.url == "http://127.0.0.1:1"


def test_connect_picks_http_or_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SWEEPER_COORDINATOR", raising=False)
    monkeypatch.setenv("SWEEPER_TOKEN", "from-env")
    remote = connect("http://127.0.0.1:9")
    assert isinstance(remote, HttpCoordinator) and remote._token == "from-env"
    assert connect("http://127.0.0.1:9", token="given")._token == "given"  # type: ignore[attr-defined]
    monkeypatch.setenv("SWEEPER_COORDINATOR", "https://coord.example:8765")
    assert connect().url == "https://coord.example:8765"  # type: ignore[attr-defined]
    monkeypatch.delenv("SWEEPER_COORDINATOR")
    monkeypatch.setenv("SWEEPER_DB", f"sqlite:///{tmp_path / 'env.db'}")
    embedded = connect()
    assert isinstance(embedded, Coordinator) and (tmp_path / "env.db").exists()
    embedded.close()
    other = connect(db=f"sqlite:///{tmp_path / 'arg.db'}")
    assert isinstance(other, Coordinator) and (tmp_path / "arg.db").exists()
    other.close()
    # A store given wins over the environment's coordinator; both given is a mistake.
    monkeypatch.setenv("SWEEPER_COORDINATOR", "https://coord.example:8765")
    given = connect(db=f"sqlite:///{tmp_path / 'arg.db'}")
    assert isinstance(given, Coordinator)
    given.close()
    with pytest.raises(ValueError, match="either coordinator"):
        connect("http://127.0.0.1:9", db=f"sqlite:///{tmp_path / 'arg.db'}")


def open_files_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open."""
    paths = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            paths.append(os.readlink(fd))
        except OSError:  # closed since the listing (another thread's)
            continue
    return [p for p in paths if p.startswith(str(folder))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_an_embedded_coordinator_closed_holds_no_file_of_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # sweeper.agent() writes its trials' folders here
    one_point = {"method": "grid", "parameters": {"x": {"values": [1]}}}
    db = f"sqlite:///{tmp_path / 'closed.db'}"
    with connect(db=db) as coordinator:
        sweep = coordinator.create_sweep(parse_sweep(one_point))
        assert open_files_under(tmp_path)  # the database, its write-ahead log and its index
    assert open_files_under(tmp_path) == []
    # sweeper.sweep() and sweeper.agent() close the store they open, too.
    made = sweeper.sweep(one_point, db=db)
    sweeper.agent(made, function=lambda: sweeper.init(), db=db)
    assert open_files_under(tmp_path) == []
    with connect(db=db) as again:
        assert {s.id for s in again.list_sweeps()} == {sweep.id, made}
        assert [t.state for t in again.trials(made)] == [TrialState.FINISHED]


def test_both_coordinators_have_the_service_methods() -> None:
    methods = [name for name in dir(CoordinatorService) if not name.startswith("_")]
    assert {"next_trial", "finish_trial", "create_sweep", "trials", "best_trial"} <= set(methods)
    for name in methods:
        wanted = list(inspect.signature(getattr(CoordinatorService, name)).parameters)
        for cls in (Coordinator, HttpCoordinator):
            got = inspect.signature(getattr(cls, name)).parameters
            assert list(got)[: len(wanted)] == wanted, (cls, name)
            # Beyond the protocol, only options a caller may leave out (what the server passes on).
            extra = list(got.values())[len(wanted) :]
            assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extra), (cls, name)


def test_the_client_imports_nothing_heavy() -> None:
    code = (
        "import sys, sweeper.client, sweeper.connect, sweeper.protocol\n"
        "heavy = [m for m in ('fastapi', 'starlette', 'pydantic', 'httpx', 'sqlalchemy', 'numpy', 'uvicorn')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class KeepAlive(http.server.BaseHTTPRequestHandler):
    """An HTTP/1.1 server that keeps connections open and notes which connection each request
    came on; ``/api/v1/sweeps/drop`` closes a connection that already answered once, unanswered."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        answered = getattr(self, "answered", 0)
        self.server.seen.append(self.client_address)  # type: ignore[attr-defined]
        if self.path == "/api/v1/sweeps/drop" and answered:
            self.close_connection = True  # as a server does when it drops an idle connection
            return
        self.answered = answered + 1
        body = json.dumps({"status": "ok", "version": "x"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:  # the connection's end, whichever side closed it
        super().finish()
        self.server.ended.append(self.client_address)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def keep_alive_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    server.seen = []  # type: ignore[attr-defined]
    server.ended = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def keep_alive(keep_alive_server: Any) -> tuple[str, list[tuple[str, int]]]:
    return f"http://127.0.0.1:{keep_alive_server.server_address[1]}", keep_alive_server.seen


def test_calls_reuse_one_connection(keep_alive: tuple[str, list[tuple[str, int]]]) -> None:
    url, seen = keep_alive
    client = HttpCoordinator(url)
    for _ in range(5):
        assert client.health()["status"] == "ok"
    assert len(seen) == 5 and len(set(seen)) == 1


def test_a_closed_client_closes_its_connections_and_opens_a_new_one_when_called(
    keep_alive_server: Any, keep_alive: tuple[str, list[tuple[str, int]]]
) -> None:
    url, seen = keep_alive
    ended: list[tuple[str, int]] = keep_alive_server.ended
    with HttpCoordinator(url) as client:
        client.health()
        client.health()
        assert ended == []
    deadline = time.monotonic() + 5
    while not ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended == [seen[0]]  # the server saw the kept connection close
    assert client.health()["status"] == "ok"
    assert len(set(seen)) == 2


def test_threads_share_a_client(keep_alive: tuple[str, list[tuple[str, int]]]) -> None:
    url, seen = keep_alive
    client = HttpCoordinator(url)
    answers: list[str] = []

    def calls() -> None:
        for _ in range(20):
            answers.append(client.health()["status"])

    threads = [threading.Thread(target=calls) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["ok"] * 80 and len(seen) == 80
    assert len(set(seen)) <= 4  # at most one connection per thread calling at once


def test_a_connection_the_server_dropped_is_replaced(keep_alive: tuple[str, list[tuple[str, int]]]) -> None:
    url, seen = keep_alive
    client = HttpCoordinator(url)
    client.health()
    # The kept connection is closed by the server after reading the request: sent again on a new one.
    assert client._call("GET", "/sweeps/drop") == {"status": "ok", "version": "x"}
    assert len(seen) == 3 and seen[0] == seen[1] != seen[2]


def test_a_restarted_server_is_reached_again(tmp_path: Path) -> None:
    with serving(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as server:
        client = server.client()
        sweep = client.create_sweep(
            parse_sweep({"method": "random", "parameters": {"x": {"min": 0, "max": 1}}})
        )
        restarted = server.restart()
        try:
            assert client.get_sweep(sweep.id).id == sweep.id  # the kept connection died with the old server
            restarted.kill()
            with pytest.raises(CoordinatorUnavailableError, match="unreachable"):
                client.get_sweep(sweep.id)
        finally:
            restarted.stop()


def test_trial_counts_come_from_the_server_without_the_trials(tmp_path: Path) -> None:
    with serving(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as server:
        client = server.client()
        spec = parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2, 3]}}})
        sweep = client.create_sweep(spec)
        first, _ = (client.next_trial(sweep.id, AgentInfo(name=f"a{i}", host="h")) for i in range(2))
        client.finish_trial(first.trial_id, first.lease_id, TrialOutcome(TrialState.FINISHED, exit_code=0))  # type: ignore[union-attr]
        assert client.trial_counts(sweep.id) == {TrialState.FINISHED: 1, TrialState.RUNNING: 1}
        assert (
            f"/sweeps/{sweep.id}/counts " in server.log()
            and f"/sweeps/{sweep.id}/trials " not in server.log()
        )


def test_trial_counts_from_a_server_without_the_counts_route_count_its_trials(tmp_path: Path) -> None:
    """A server older than the counts route answers it as FastAPI answers any unknown route."""
    import uvicorn

    from sweeper.server.app import create_app

    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        coordinator = Coordinator(store)
        spec = parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
        sweep = coordinator.create_sweep(spec)
        coordinator.next_trial(sweep.id, AgentInfo(name="a", host="h"))
        app = create_app(coordinator, token=None)

        async def without_counts(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].endswith("/counts"):
                body = b'{"detail":"Not Found"}'
                headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
                await send({"type": "http.response.start", "status": 404, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        old = uvicorn.Server(uvicorn.Config(without_counts, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=old.run, kwargs={"sockets": [listening]}, daemon=True)
        thread.start()
        try:
            for _ in range(1000):
                if old.started:
                    break
                time.sleep(0.01)
            client = HttpCoordinator(f"http://127.0.0.1:{listening.getsockname()[1]}")
            assert client.trial_counts(sweep.id) == {TrialState.RUNNING: 1}
            with pytest.raises(SweepNotFoundError):
                client.trial_counts("nosuch00")
        finally:
            old.should_exit = True
            thread.join(10)
