"""The HTTP API, driven through HttpCoordinator against a real ``sweeper server`` subprocess,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import ServerProcess, serving, start_server

from sweeper.client import CoordinatorError, HttpCoordinator, TrialNotFoundError
from sweeper.protocol import AgentInfo, Assignment, LeaseLostError, NoTrial, NoTrialReason, SweepNotFoundError
from sweeper.protocol import TrialOutcome as Outcome
from sweeper.spec import parse_sweep
from sweeper.trials import MetricPoint, SweepState, TrialState

GRID = {
    "method": "grid",
    "name": "api",
    "program": "train.py",
    "metric": {"name": "acc", "goal": "maximize"},
    "parameters": {"lr": {"values": [0.1, 0.01, 0.001]}, "opt": {"parameters": {"mom": {"value": 0.9}}}},
}
AGENT = AgentInfo(name="box-1:1:0", host="box-1")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_store_url"))


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with serving(db_url, tmp_path) as running:
        yield running


def lease(client: HttpCoordinator, sweep_id: str) -> Assignment:
    answer = client.next_trial(sweep_id, AGENT)
    assert isinstance(answer, Assignment), answer
    return answer


def test_a_sweep_runs_to_the_end_over_http(server: ServerProcess) -> None:
    client = server.client()
    assert client.health()["status"] == "ok"
    sweep = client.create_sweep(parse_sweep(GRID))
    assert (sweep.state, sweep.name, sweep.method, sweep.spec) == (SweepState.RUNNING, "api", "grid", GRID)
    assert client.get_sweep(sweep.id) == sweep
    assert [s.id for s in client.list_sweeps()] == [sweep.id]

    for number, acc in enumerate([0.5, math.nan, 0.9], start=1):
        a = lease(client, sweep.id)
        assert (a.trial_number, a.program, a.metric_name) == (number, "train.py", "acc")
        assert a.config["opt"] == {"mom": 0.9}
        assert client.heartbeat(a.trial_id, a.lease_id).stop is False
        points = [MetricPoint("acc", acc, 1, 1, 1.5), MetricPoint("loss", math.inf, 1, 2, 1.5)]
        assert client.report_metrics(a.trial_id, a.lease_id, points).stop is False
        client.report_metrics(a.trial_id, a.lease_id, points)  # sent twice, counted once
        client.finish_trial(a.trial_id, a.lease_id, Outcome(TrialState.FINISHED, exit_code=0))

    done = client.next_trial(sweep.id, AGENT)
    assert isinstance(done, NoTrial) and done.reason is NoTrialReason.DONE
    assert client.get_sweep(sweep.id).state is SweepState.FINISHED
    trials = client.trials(sweep.id, with_history=True)
    assert [t.config["lr"] for t in trials] == [0.1, 0.01, 0.001]
    assert all(t.state is TrialState.FINISHED and t.exit_code == 0 for t in trials)
    assert math.isnan(trials[1].summary["acc"]) and trials[0].summary["loss"] == math.inf
    assert [(p.name, p.step, p.seq) for p in trials[0].history or ()] == [("acc", 1, 1), ("loss", 1, 2)]
    assert client.trials(sweep.id)[0].history is None
    best = client.best_trial(sweep.id)
    assert best is not None and best.number == 3
    assert client.spec_of(sweep.id).metric is not None


def test_an_agent_slot_of_eight_gpus_named_by_uuid_gets_trials(server: ServerProcess) -> None:
    # --gpus-per-trial 8 in a job that names its GPUs by UUID: over 300 characters.
    client = server.client()
    sweep = client.create_sweep(parse_sweep(GRID))
    devices = ",".join(f"GPU-{i:08d}-aaaa-bbbb-cccc-000000000000" for i in range(8))
    assert len(devices) > 300
    assert isinstance(client.next_trial(sweep.id, AgentInfo("box-1:1:0", "box-1", devices)), Assignment)


def test_lease_lost_answers_409_and_raises_lease_lost(server: ServerProcess) -> None:
    client = server.client()
    sweep = client.create_sweep(parse_sweep(GRID))
    a = lease(client, sweep.id)
    with pytest.raises(LeaseLostError, match="another lease id"):
        client.heartbeat(a.trial_id, "not-the-lease")
    client.finish_trial(
        a.trial_id, a.lease_id, Outcome(TrialState.FAILED, exit_code=3, stderr_tail="boom\x00")
    )
    for call in (
        lambda: client.heartbeat(a.trial_id, a.lease_id),
        lambda: client.report_metrics(a.trial_id, a.lease_id, [MetricPoint("acc", 1.0, 2, 2, 2.0)]),
        lambda: client.finish_trial(a.trial_id, a.lease_id, Outcome(TrialState.FINISHED)),
    ):
        with pytest.raises(LeaseLostError, match="is failed"):
            call()
    failed = client.trials(sweep.id)[0]
    assert (failed.state, failed.exit_code, failed.stderr_tail) == (TrialState.FAILED, 3, "boom\ufffd")
    raw = post(server, f"/trials/{a.trial_id}/heartbeat", {"lease_id": a.lease_id})
    assert raw[0] == 409 and raw[1]["code"] == "lease_lost"


def test_an_expired_lease_is_lost(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, extra_args=["--lease-seconds", "1"]) as server:
        client = server.client()
        sweep = client.create_sweep(parse_sweep(GRID))
        a = lease(client, sweep.id)
        time.sleep(1.5)  # past the lease: expired, or already marked lost by the server's periodic pass
        with pytest.raises(LeaseLostError, match="expired|lost"):
            client.heartbeat(a.trial_id, a.lease_id)
        retry = lease(client, sweep.id)  # a lost configuration is run again
        assert (retry.config, retry.trial_number) == (a.config, 2)
        assert client.trials(sweep.id)[0].state is TrialState.LOST


def test_unknown_things_are_404_and_bad_transitions_409(server: ServerProcess) -> None:
    client = server.client()
    with pytest.raises(SweepNotFoundError, match="nosuch"):
        client.get_sweep("nosuch")
    for call in (
        lambda: client.next_trial("nosuch", AGENT),
        lambda: client.trials("nosuch"),
        lambda: client.set_sweep_state("nosuch", SweepState.PAUSED),
    ):
        with pytest.raises(SweepNotFoundError):
            call()
    with pytest.raises(TrialNotFoundError, match="12345"):
        client.heartbeat(12345, "lease")
    sweep = client.create_sweep(parse_sweep(GRID))
    assert client.set_sweep_state(sweep.id, SweepState.CANCELLED).state is SweepState.CANCELLED
    with pytest.raises(CoordinatorError, match="cancelled: it cannot become running") as caught:
        client.set_sweep_state(sweep.id, SweepState.RUNNING)
    assert (caught.value.status, caught.value.code) == (409, "invalid_transition")
    stopped = client.next_trial(sweep.id, AGENT)
    assert isinstance(stopped, NoTrial) and stopped.reason is NoTrialReason.STOPPED


def test_trial_ids_and_numbers_past_the_stores_columns_are_refused_not_a_fault(server: ServerProcess) -> None:
    # PostgreSQL's columns are 32-bit: a larger number reached the database and came back as a 500.
    client = server.client()
    sweep = client.create_sweep(parse_sweep(GRID))
    assert client.trials(sweep.id, after=2**31 - 1) == []
    for call in (
        lambda: client.trials(sweep.id, after=2**31),
        lambda: client.heartbeat(2**31, "lease"),
        lambda: client.report_metrics(2**40, "lease", [MetricPoint("loss", 1.0, 0, 1, 0.0)]),
    ):
        with pytest.raises(CoordinatorError) as caught:
            call()
        assert caught.value.status == 422, caught.value


def test_an_invalid_sweep_lists_every_problem(server: ServerProcess) -> None:
    bad = {"method": "gird", "parameters": {"lr": {"min": 1, "max": 0}}}
    status, body = post(server, "/sweeps", bad)
    assert status == 422 and body["code"] == "invalid_sweep"
    paths = {p["path"] for p in body["problems"]}
    assert {"method", "parameters.lr"} <= paths or {"method", "parameters.lr.min"} <= paths, body
    assert server.client().list_sweeps() == []  # nothing was stored


def test_pause_and_cancel_reach_agents(server: ServerProcess) -> None:
    client = server.client()
    sweep = client.create_sweep(parse_sweep(GRID))
    a = lease(client, sweep.id)
    client.set_sweep_state(sweep.id, SweepState.PAUSED)
    waiting = client.next_trial(sweep.id, AGENT)
    assert isinstance(waiting, NoTrial) and waiting.reason is NoTrialReason.WAIT
    client.set_sweep_state(sweep.id, SweepState.CANCELLED)
    directive = client.heartbeat(a.trial_id, a.lease_id)
    assert directive.stop and directive.reason == "sweep cancelled"


def test_parallel_agents_never_share_a_trial(server: ServerProcess) -> None:
    client = server.client()
    spec = dict(GRID, parameters={"x": {"values": list(range(24))}})
    sweep = client.create_sweep(parse_sweep(spec))
    got: list[int] = []
    errors: list[BaseException] = []

    def agent(index: int) -> None:
        own = server.client()
        try:
            while isinstance(answer := own.next_trial(sweep.id, AgentInfo(f"a{index}", "box")), Assignment):
                got.append(answer.config["x"])
                own.finish_trial(answer.trial_id, answer.lease_id, Outcome(TrialState.FINISHED, exit_code=0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(got) == list(range(24))
    assert [t.number for t in client.trials(sweep.id)] == list(range(1, 25))


def test_a_killed_server_restarts_and_running_leases_survive(db_url: str, tmp_path: Path) -> None:
    server = start_server(db_url, tmp_path, extra_args=["--lease-seconds", "2"])
    try:
        client = server.client()
        sweep = client.create_sweep(parse_sweep(GRID))
        first = lease(client, sweep.id)
        client.report_metrics(first.trial_id, first.lease_id, [MetricPoint("acc", 0.4, 1, 1, 1.0)])
        server.kill()
        with pytest.raises(OSError):
            client.heartbeat(first.trial_id, first.lease_id)  # down: the agent would retry
        time.sleep(2.5)  # longer than the lease: only the restart rule keeps it
        server = server.restart()
        assert "1 running trial(s) keep their leases" in server.log()
        assert client.heartbeat(first.trial_id, first.lease_id).stop is False
        client.report_metrics(first.trial_id, first.lease_id, [MetricPoint("acc", 0.6, 2, 2, 2.0)])
        client.finish_trial(first.trial_id, first.lease_id, Outcome(TrialState.FINISHED, exit_code=0))
        second = lease(client, sweep.id)
        assert second.trial_number == 2 and second.config["lr"] == 0.01
        trials = client.trials(sweep.id)
        assert trials[0].state is TrialState.FINISHED and trials[0].summary == {"acc": 0.6}
    finally:
        server.stop()


def post(server: ServerProcess, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
    """A raw request, for what the client hides: status codes and error bodies."""
    request = urllib.request.Request(
        f"{server.url}/api/v1{path}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token or server.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_an_assignment_carries_the_sweeps_tracker_settings(server: ServerProcess) -> None:
    # Remote agents set up the same trackers as the process that created the sweep.
    client = server.client()
    integrations = {"mlflow": {"tracking_uri": "http://127.0.0.1:5999", "experiment": "digits"}}
    sweep = client.create_sweep(parse_sweep(GRID | {"integrations": integrations}))
    assert lease(client, sweep.id).integrations == integrations
    plain = client.create_sweep(parse_sweep(GRID))
    got = lease(client, plain.id)
    assert got.integrations is None and got.project is None and got.entity is None
    # The sweep file's W&B keys: the defaults of its wandb settings, and of the trial's own wandb.init().
    keyed = client.create_sweep(
        parse_sweep(GRID | {"project": "p", "entity": "e", "integrations": {"wandb": {"mode": "offline"}}})
    )
    got = lease(client, keyed.id)
    assert (got.project, got.entity) == ("p", "e")
    assert got.integrations == {"wandb": {"mode": "offline", "project": "p", "entity": "e"}}


def exchange(server: ServerProcess, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{server.url}/api/v1{path}", data=body, method="POST")
    request.add_header("Content-Type", content_type)
    request.add_header("Authorization", f"Bearer {server.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_agent_routes_answer_as_the_documented_app_does(server: ServerProcess) -> None:
    # "application/json" takes the agent protocol's short path; with a charset the same request
    # goes through FastAPI's routing. Both must give the same status and the same body.
    client = server.client()
    sweep = client.create_sweep(parse_sweep(GRID))
    a = lease(client, sweep.id)
    point = {"name": "acc", "value": 0.5, "step": 1, "seq": 1, "time": 1.0}
    requests = [
        (f"/trials/{a.trial_id}/heartbeat", {"lease_id": a.lease_id}),
        (f"/trials/{a.trial_id}/heartbeat", {"lease_id": "not-the-lease"}),
        (f"/trials/{a.trial_id}/metrics", {"lease_id": a.lease_id, "points": [point]}),
        (f"/trials/{a.trial_id}/metrics", {"lease_id": a.lease_id, "points": [{**point, "value": "nan"}]}),
        (f"/trials/{a.trial_id}/metrics", {"lease_id": a.lease_id, "points": "none"}),
        ("/trials/99999/heartbeat", {"lease_id": a.lease_id}),
        ("/trials/0/heartbeat", {"lease_id": a.lease_id}),
        ("/sweeps/nosuch/next", {"name": "a", "host": "h"}),
        (f"/sweeps/{sweep.id}/next", {"name": "", "host": "h"}),
        (f"/trials/{a.trial_id}/finish", {"lease_id": a.lease_id, "state": "running"}),
    ]
    for path, body in requests:
        raw = json.dumps(body).encode()
        short = exchange(server, path, raw, "application/json")
        documented = exchange(server, path, raw, "application/json; charset=utf-8")
        assert short == documented, (path, body)
    finish = json.dumps({"lease_id": a.lease_id, "state": "finished", "exit_code": 0}).encode()
    assert exchange(server, f"/trials/{a.trial_id}/finish", finish, "application/json") == (204, b"")
    again = exchange(server, f"/trials/{a.trial_id}/finish", finish, "application/json")
    assert again[0] == 409 and json.loads(again[1])["code"] == "lease_lost"
    assert client.trials(sweep.id)[0].summary == {"acc": 0.5}
