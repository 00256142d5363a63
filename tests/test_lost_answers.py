"""An answer lost on its way back to the agent: the server leased a trial, and the agent never
heard. Asking again gets that trial, not a second one left running with nobody at its end, which
would hold its configuration until the lease ran out and then use up its retry.

Real parts: a `sweeper server` subprocess, an HTTP proxy in front of it (a thread here) that
drops the answer to a lease on the floor (the connection closes once the server has answered),
the client, and a `sweeper agent` process running real trials through the proxy.
"""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeper.client import CoordinatorUnavailableError
from sweeper.protocol import AgentInfo, Assignment
from sweeper.trials import TrialState

pytest.importorskip("fastapi")
from server_helpers import (  # noqa: E402
    QUIET,
    TOKEN,
    ServerProcess,
    agent_argv,
    e2e_grid,
    serving,
    without_sweeper_settings,
)

AGENT = AgentInfo(name="lost-answer-agent", host="localhost")


class AnswerDroppingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream``; the answers to the first ``drops`` leases (POST
    .../next, not the asks of a stopping agent) are read from the server and never passed on:
    the agent's connection just closes."""

    daemon_threads = True

    def __init__(self, upstream: str, drops: int) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.drops = drops
        self.dropped: list[bytes] = []  # the answers the agent never saw
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def drop_this(self, method: str, path: str, body: bytes) -> bool:
        with self.lock:
            lease = method == "POST" and path.endswith("/next") and b'"new_lease"' not in body
            if lease and len(self.dropped) < self.drops:
                self.dropped.append(b"")
                return True
            return False


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections, as the agent's client keeps them
    server: AnswerDroppingProxy

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            raw = answer.read()
        finally:
            upstream.close()
        if self.server.drop_this(self.command, self.path, body):
            self.server.dropped[-1] = raw
            self.close_connection = True  # the server answered; the agent hears nothing
            return
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on each store: on PostgreSQL, leases are taken in batches on a thread of their own."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'sweeper.db'}"
    else:
        db = request.getfixturevalue("postgres_store_url")
    with serving(db, tmp_path / "server", extra_args=QUIET) as server:
        yield server


def proxy_client(proxy: AnswerDroppingProxy):  # noqa: ANN201 - an HttpCoordinator
    from sweeper.client import HttpCoordinator

    return HttpCoordinator(proxy.url, token=TOKEN, timeout=10)


def test_asking_again_after_a_lost_answer_gets_the_trial_that_ask_leased(server: ServerProcess) -> None:
    sweep_id = e2e_grid(server, {"x": {"values": list(range(3))}})
    proxy = AnswerDroppingProxy(server.url, drops=1)
    try:
        with proxy_client(proxy) as client:
            with pytest.raises(CoordinatorUnavailableError):  # a new connection: no quiet resend
                client.next_trial(sweep_id, AGENT)
            assert proxy.dropped and b'"trial_number":1' in proxy.dropped[0], "the server leased trial 1"
            again = client.next_trial(sweep_id, AGENT)
    finally:
        proxy.shutdown()
    assert isinstance(again, Assignment)
    assert again.trial_number == 1, "the trial the lost answer held, not the next one"
    running = server.client().trials(sweep_id)
    assert [(t.number, t.state) for t in running] == [(1, TrialState.RUNNING)]
    assert running[0].lease_id == again.lease_id


def test_a_resend_the_agent_did_not_know_of_gets_the_same_trial(server: ServerProcess) -> None:
    """A kept-alive connection that closes without an answer is used again on a new one,
    unasked: the server tells it from a second ask by its request id."""
    sweep_id = e2e_grid(server, {"x": {"values": list(range(3))}})
    proxy = AnswerDroppingProxy(server.url, drops=1)
    try:
        with proxy_client(proxy) as client:
            client.get_sweep(sweep_id)  # the connection is kept, so the lease goes on a used one
            got = client.next_trial(sweep_id, AGENT)
            assert len(proxy.dropped) == 1, "the first answer was dropped and the request sent again"
    finally:
        proxy.shutdown()
    assert isinstance(got, Assignment)
    assert got.trial_number == 1
    assert [t.number for t in server.client().trials(sweep_id)] == [1]


def test_an_agent_whose_lease_answers_are_lost_runs_every_point_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    sweep_id = e2e_grid(server, {"x": {"values": list(range(3))}})
    proxy = AnswerDroppingProxy(server.url, drops=2)
    folder = tmp_path / "agent"
    folder.mkdir()
    env = without_sweeper_settings()
    try:
        done = subprocess.run(
            agent_argv(proxy.url, sweep_id, "--max-backoff", "1"),
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        proxy.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(proxy.dropped) == 2
    trials = server.client().trials(sweep_id)
    assert sorted((t.config["x"], t.state) for t in trials) == [(x, TrialState.FINISHED) for x in range(3)]
    assert [t.number for t in trials] == [1, 2, 3], "no trial was leased and left behind"


def test_an_agent_stopped_after_a_lost_answer_gives_back_the_trial_that_ask_leased(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Stopped (a preempted job) while it waits to ask again: the trial the lost answer held
    ends at once, interrupted, and runs again; it is not left running until its lease runs out
    and then counted as a lost attempt."""
    sweep_id = e2e_grid(server, {"x": {"values": list(range(2))}})
    proxy = AnswerDroppingProxy(server.url, drops=1000)  # every lease's answer is lost
    folder = tmp_path / "agent"
    folder.mkdir()
    env = without_sweeper_settings()

    agent = subprocess.Popen(
        [*agent_argv(proxy.url, sweep_id), "--max-backoff", "30"],
        cwd=folder,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not proxy.dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.dropped, "the agent asked for a trial"
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    finally:
        agent.kill()
        proxy.shutdown()
    assert agent.returncode == 130, stderr  # stopped by a signal
    [trial] = server.client().trials(sweep_id)
    assert (trial.number, trial.state, trial.stop_reason) == (1, TrialState.LOST, "interrupted (SIGTERM)")
    # The configuration runs again, with its attempt not used up.
    done = subprocess.run(
        agent_argv(server.url, sweep_id), cwd=folder, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    trials = server.client().trials(sweep_id)
    assert sorted((t.config["x"], t.state) for t in trials if t.number > 1) == [
        (0, TrialState.FINISHED),
        (1, TrialState.FINISHED),
    ]


def test_an_ask_for_no_new_lease_that_names_no_request_is_refused(server: ServerProcess) -> None:
    from sweeper.client import CoordinatorError

    sweep_id = e2e_grid(server, {"x": {"values": list(range(1))}})
    body = {"name": "a", "host": "h", "new_lease": False}
    with server.client() as client, pytest.raises(CoordinatorError) as refused:
        client._call("POST", f"/sweeps/{sweep_id}/next", body)
    assert refused.value.status == 422 and "name that ask's request_id" in str(refused.value)
    assert server.client().trials(sweep_id) == []


def test_the_way_a_server_refuses_a_field_it_does_not_know_is_the_way_the_client_tells_it_is_older(
    server: ServerProcess,
) -> None:
    from sweeper.client import CoordinatorError, _older_server

    sweep_id = e2e_grid(server, {"x": {"values": list(range(1))}})
    body = {"name": "a", "host": "h", "field_of_a_later_version": 1}
    with server.client() as client, pytest.raises(CoordinatorError) as refused:
        client._call("POST", f"/sweeps/{sweep_id}/next", body)
    assert _older_server(refused.value, "field_of_a_later_version"), str(refused.value)
    assert not _older_server(refused.value, "request_id")


class OlderServer(http.server.BaseHTTPRequestHandler):
    """Answers leases as a server older than request ids does: 422 for one that has them (the
    body a sweeper server sends, checked above), 'wait' for one without."""

    protocol_version = "HTTP/1.1"
    asks: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        ask = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).asks.append(ask)
        if "request_id" in ask:
            status, answer = (
                422,
                {
                    "code": "invalid_request",
                    "detail": "the request is not valid",
                    "problems": [
                        {"path": "body.request_id", "message": "Extra inputs are not permitted"},
                        {"path": "body.resent", "message": "Extra inputs are not permitted"},
                    ],
                },
            )
        else:
            status, answer = 200, {"no_trial": {"reason": "wait", "message": "busy", "retry_after": 1.0}}
        raw = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def test_an_agent_asks_a_server_older_than_request_ids_as_that_server_knows_how() -> None:
    from sweeper.client import HttpCoordinator
    from sweeper.protocol import NoTrial

    older = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OlderServer)
    threading.Thread(target=older.serve_forever, daemon=True).start()
    try:
        with HttpCoordinator(f"http://127.0.0.1:{older.server_address[1]}") as client:
            for _ in range(2):
                assert isinstance(client.next_trial("abc", AGENT), NoTrial)
    finally:
        older.shutdown()
        older.server_close()
    assert ["request_id" in ask for ask in OlderServer.asks] == [True, False, False], "asked once with it"
