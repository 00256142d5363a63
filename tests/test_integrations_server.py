"""`sweeper server` keeps the sweep-level tracker record of the sweeps it serves.

End to end: a real `mlflow server`, a real `sweeper server`, `sweeper sweep` and one remote
`sweeper agent`, read back through MlflowClient. In process: the coordinator's change listener,
and a request that does not wait while the record is being written.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sweeper.integrations import sweep as sweep_record
from sweeper.integrations.sweep import SweepRecords

from sweeper.coordinator import Coordinator
from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
from sweeper.spec import parse_sweep
from sweeper.store import open_store
from sweeper.trials import SweepState, TrialState

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("fastapi")
from cli_support import SWEEPER, sweeper_cli  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from server_helpers import TOKEN, serving  # noqa: E402
from trackers_support import MlflowServer, write_grid_sweep  # noqa: E402

AGENT = AgentInfo(name="host:1:0", host="host")


def parent_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'sweep'", max_results=10)


def test_server_records_the_sweep_of_remote_agents(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    write_grid_sweep(
        tmp_path, [0.3, 0.1, 0.2], f"{{mlflow: {{tracking_uri: '{mlflow_server.uri}', experiment: served}}}}"
    )
    client = MlflowClient(mlflow_server.uri)
    with serving(f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path / "server") as server:
        where = ["--coordinator", server.url, "--token", TOKEN]
        sweep_id = sweeper_cli("sweep", "sweep.yaml", *where, cwd=tmp_path).split()[0]

        # The server opens the parent run when the sweep is created, before any agent runs.
        deadline = time.monotonic() + 60
        while not parent_runs(client, "served"):
            assert time.monotonic() < deadline, "no parent run:\n" + server.log()
            time.sleep(0.2)

        agent_dir = tmp_path / "agent"
        agent_dir.mkdir()
        sweeper_cli("agent", sweep_id, *where, cwd=agent_dir)
        trials = server.client().trials(sweep_id)
        server.stop()  # SIGTERM: the server sends what waits for the trackers, then exits

    assert [t.state for t in trials] == [TrialState.FINISHED] * 3
    (parent,) = parent_runs(client, "served")
    run_id = parent.info.run_id
    assert parent.data.tags["sweeper.sweep_id"] == sweep_id
    assert parent.data.tags["sweeper.state"] == "finished" and parent.info.status == "FINISHED"
    assert parent.data.params == {"method": "grid", "metric": "loss", "goal": "minimize"}
    assert {"sweep.yaml", "leaderboard.csv", "leaderboard.json", "best_so_far.png"} <= {
        a.path for a in client.list_artifacts(run_id)
    }
    board = json.loads(Path(client.download_artifacts(run_id, "leaderboard.json", str(tmp_path))).read_text())
    assert sorted(row["trial"] for row in board["trials"]) == sorted(t.number for t in trials)
    assert board["trials"][0]["config.lr"] == 0.1  # best first

    # best_loss once per ended trial, by trials ended, each the best so far in the order they ended.
    ended = sorted(trials, key=lambda t: (t.ended_at, t.number))
    expected, best = [], float("inf")
    for count, trial in enumerate(ended, 1):
        best = min(best, trial.config["lr"] / 3)
        expected.append((count, pytest.approx(best)))
    for name in ("best_loss", "loss"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        assert sorted(logged) == expected, name
    # The runs table's value of the sweep's run is its best, not its last trial's (0.2 / 3).
    assert parent.data.metrics["loss"] == parent.data.metrics["best_loss"] == pytest.approx(0.1 / 3)

    experiment = client.get_experiment_by_name("served").experiment_id
    children = client.search_runs([experiment], "tags.`sweeper.role` = 'trial'", max_results=10)
    assert sorted(c.data.tags["sweeper.trial_number"] for c in children) == sorted(
        str(t.number) for t in trials
    )
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == run_id
        assert child.info.status == "FINISHED"


def test_agents_with_experiments_of_their_own_log_into_the_sweeps(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A sweep file that names no experiment, an agent whose shell exports MLFLOW_EXPERIMENT_NAME:
    the experiment was each process's, so the agent made a second sweep run in its own experiment
    (left RUNNING) and put its trials there, away from the server's. Now the experiment is settled
    when the sweep is made (the creating shell's, else "sweeper") and stored with it."""
    write_grid_sweep(tmp_path, [0.1, 0.2], f"{{mlflow: {{tracking_uri: '{mlflow_server.uri}'}}}}")
    plain = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPER_"))}
    client = MlflowClient(mlflow_server.uri)
    with serving(f"sqlite:///{tmp_path / 'sweeper.db'}", tmp_path / "server") as server:
        where = ["--coordinator", server.url, "--token", TOKEN]
        made = subprocess.run(
            [SWEEPER, "sweep", "sweep.yaml", *where], cwd=tmp_path, env=plain, capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
        sweep_id = made.stdout.split()[0]
        agent_dir = tmp_path / "agent"
        agent_dir.mkdir()
        agent = subprocess.run(
            [SWEEPER, "agent", sweep_id, *where],
            cwd=agent_dir,
            env={**plain, "MLFLOW_EXPERIMENT_NAME": "agents-own"},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert agent.returncode == 0, agent.stdout + agent.stderr
        server.stop()  # what waits for the trackers is sent first
    assert client.get_experiment_by_name("agents-own") is None
    parents = parent_runs(client, "sweeper")
    assert len(parents) == 1, [
        (r.info.run_id, r.info.status, r.info.start_time, r.data.tags) for r in parents
    ]
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("sweeper").experiment_id
    children = client.search_runs([experiment], "tags.`sweeper.role` = 'trial'", max_results=10)
    assert len(children) == 2
    assert all(child.data.tags["mlflow.parentRunId"] == parent.info.run_id for child in children)


@pytest.mark.parametrize(
    ("block", "environ", "expected"),
    [
        ({"tracking_uri": "http://x:5000"}, {"MLFLOW_EXPERIMENT_NAME": "shell"}, "shell"),
        (True, {}, "sweeper"),
        (None, {"MLFLOW_EXPERIMENT_NAME": "shell"}, "shell"),  # `mlflow:` and nothing after it
        (False, {"MLFLOW_EXPERIMENT_NAME": "shell"}, None),
        ({"experiment": "file"}, {"MLFLOW_EXPERIMENT_NAME": "shell"}, "file"),
        ({}, {"MLFLOW_EXPERIMENT_ID": "7"}, None),  # by id: each process's, as before
        ({"enabled": False}, {"MLFLOW_EXPERIMENT_NAME": "shell"}, None),
    ],
)
def test_a_new_sweep_stores_its_mlflow_experiment(block: object, environ: dict, expected: str | None) -> None:
    from sweeper.integrations.settings import with_experiment_named

    raw = {"method": "grid", "integrations": {"mlflow": block, "wandb": True}}
    named = with_experiment_named(raw, environ)
    mlflow = named["integrations"]["mlflow"]
    assert (mlflow.get("experiment") if isinstance(mlflow, dict) else None) == expected
    assert named["integrations"]["wandb"] is True
    assert with_experiment_named({"method": "grid"}, environ) == {"method": "grid"}


# --- in process -----------------------------------------------------------------------------------


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def grid(values: list, **extra: object) -> dict:
    return {
        "method": "grid",
        "program": "t.py",
        "parameters": {"x": {"values": values}},
        "sweeper": {"max_retries": 0},
        **extra,
    }


def test_the_coordinator_tells_its_listeners_what_changed(tmp_path: Path) -> None:
    seen: list[str] = []
    clock = Clock()
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")

    def failing(_sweep_id: str) -> None:
        raise RuntimeError("a broken listener")

    coordinator = Coordinator(store, clock=clock, lease_seconds=30, on_sweep_changed=[failing, seen.append])
    a = coordinator.create_sweep(parse_sweep(grid([1, 2]))).id
    assert seen == [a]

    first = coordinator.next_trial(a, AGENT)
    assert isinstance(first, Assignment) and seen == [a]  # leasing a trial ends nothing
    coordinator.finish_trial(first.trial_id, first.lease_id, TrialOutcome(TrialState.FINISHED))
    assert seen == [a, a]

    coordinator.next_trial(a, AGENT)
    clock.now += 60  # the agent went silent: its trial is lost at the next lease request
    b = coordinator.create_sweep(parse_sweep(grid([1]))).id
    seen.clear()
    coordinator.next_trial(b, AGENT)
    assert seen == [a, a]  # its trial was lost, then (no retries left) the sweep finished
    assert coordinator.get_sweep(a).state is SweepState.FINISHED

    coordinator.set_sweep_state(b, SweepState.CANCELLED)
    assert seen == [a, a, b]

    # In a batch (the server's agent routes on SQLite) listeners, which read the store from
    # threads of their own, hear of a change once it is committed.
    c = coordinator.create_sweep(parse_sweep(grid([1]))).id
    seen.clear()
    with store.batch():
        coordinator.set_sweep_state(c, SweepState.PAUSED)
        assert seen == []
    assert seen == [c]
    store.close()


@contextmanager
def recording(tmp_path: Path) -> Iterator[tuple[Coordinator, SweepRecords]]:
    """A coordinator on a fresh SQLite store, its sweeps recorded as `sweeper server` records them."""
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    records = SweepRecords()
    coordinator = Coordinator(store, on_sweep_changed=[records.changed])
    records.start(coordinator)
    try:
        yield coordinator, records
    finally:
        records.close()
        store.close()


def finish_trials(coordinator: Coordinator, sweep_id: str, n: int) -> None:
    """Lease and finish ``n`` trials of the sweep, as an agent would."""
    for _ in range(n):
        got = coordinator.next_trial(sweep_id, AGENT)
        assert isinstance(got, Assignment)
        coordinator.finish_trial(got.trial_id, got.lease_id, TrialOutcome(TrialState.FINISHED))


def open_trackers(sweep_id: str) -> list[tuple[str, str]]:
    """This process's tracker sessions of the sweep still open."""
    from sweeper.integrations import session

    return [key for key in session._sessions if key[0] == sweep_id]


def send_what_waits(records: SweepRecords, sweep_id: str) -> None:
    """Wait until the record handed its calls to the sweep's trackers, and they sent them."""
    from sweeper.integrations import session

    assert records.wait_idle()
    assert all(tracker.flush() for key in open_trackers(sweep_id) for tracker in session._sessions[key])


def test_a_request_never_waits_for_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record's thread is stuck (a tracker that hangs): the coordinator still answers."""
    release = threading.Event()
    built: list[str] = []

    def stuck(_coordinator: object, sweep_id: str) -> None:
        built.append(sweep_id)
        release.wait(30)

    monkeypatch.setattr(sweep_record.SweepRecorder, "for_sweep", staticmethod(stuck))
    with recording(tmp_path) as (coordinator, records):
        spec = parse_sweep(grid([1, 2], integrations={"mlflow": {"tracking_uri": "http://127.0.0.1:9"}}))
        sweep_id = coordinator.create_sweep(spec).id
        finish_trials(coordinator, sweep_id, 2)
        assert coordinator.get_sweep(sweep_id).state is SweepState.FINISHED
        assert not release.is_set()
        release.set()
        assert records.wait_idle()
        assert built == [sweep_id]  # once, lazily; the changes that came meanwhile became one update


def test_an_ended_sweep_lets_go_of_its_trackers(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """A server runs one sweep after another: each ended sweep's trackers (a thread each) are
    closed then, with the record complete, not kept until the server stops."""
    with recording(tmp_path) as (coordinator, records):
        block = {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "ends"}}
        sweep_id = coordinator.create_sweep(parse_sweep(grid([1], integrations=block))).id
        assert records.wait_idle()
        assert open_trackers(sweep_id)  # its record is open
        finish_trials(coordinator, sweep_id, 1)
        assert records.wait_idle()
        assert not open_trackers(sweep_id)
        (parent,) = parent_runs(MlflowClient(mlflow_server.uri), "ends")
        assert parent.info.status == "FINISHED"  # the record was ended before its trackers closed


def test_agents_of_the_sweep_ending_in_the_same_process_leave_the_record_open(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A notebook or test that runs the server and agents in one process: the agents' group closing
    its trackers (as each group of agents does when it ends) leaves those of the sweep's record,
    which it shares, until the sweep ends."""
    from sweeper.integrations import session

    with recording(tmp_path) as (coordinator, records):
        block = {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "shared"}}
        sweep_id = coordinator.create_sweep(parse_sweep(grid([1, 2], integrations=block))).id
        assert records.wait_idle()
        session.use_sweep(sweep_id)  # a group of agents starts here, and ends
        session.close_sweep(sweep_id)
        assert open_trackers(sweep_id)  # the record's trackers stay
        finish_trials(coordinator, sweep_id, 2)
        assert records.wait_idle()
        assert not open_trackers(sweep_id)
        (parent,) = parent_runs(MlflowClient(mlflow_server.uri), "shared")
        assert parent.info.status == "FINISHED"


def test_a_stopped_sweeps_record_ends_as_stopped_and_runs_again_on_resume(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """`sweeper stop` on a sweep the server serves: once its trials have ended, its MLflow run is
    KILLED and says stopped (it stayed RUNNING, "running", for as long as the server ran);
    `sweeper resume` makes it RUNNING again, and the sweep's end FINISHED."""
    client = MlflowClient(mlflow_server.uri)

    def parent() -> tuple[str, str]:
        send_what_waits(records, sweep_id)
        (run,) = parent_runs(client, "stops")
        return run.info.status, run.data.tags["sweeper.state"]

    with recording(tmp_path) as (coordinator, records):
        block = {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "stops"}}
        sweep_id = coordinator.create_sweep(parse_sweep(grid([1, 2, 3], integrations=block))).id
        got = coordinator.next_trial(sweep_id, AGENT)
        assert isinstance(got, Assignment)
        coordinator.set_sweep_state(sweep_id, SweepState.STOPPED)
        assert parent() == ("RUNNING", "running")  # its trial still runs
        coordinator.finish_trial(got.trial_id, got.lease_id, TrialOutcome(TrialState.FINISHED))
        assert records.wait_idle() and not open_trackers(sweep_id)  # let go of until a resume
        assert parent() == ("KILLED", "stopped")
        coordinator.set_sweep_state(sweep_id, SweepState.RUNNING)
        assert parent() == ("RUNNING", "running")
        finish_trials(coordinator, sweep_id, 2)
        assert records.wait_idle()
        assert not open_trackers(sweep_id)  # its record ended, and let go of its trackers
        (run,) = parent_runs(client, "stops")
        assert (run.info.status, run.data.tags["sweeper.state"]) == ("FINISHED", "finished")


def test_a_finished_sweep_resumed_to_run_what_failed_records_again(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A finished sweep with a configuration that failed, resumed: its record, ended when it
    finished, runs again (MLflow run RUNNING) until the sweep finishes once more."""
    client = MlflowClient(mlflow_server.uri)

    def parent() -> tuple[str, str]:
        (run,) = parent_runs(client, "resumed")
        return run.info.status, run.data.tags["sweeper.state"]

    with recording(tmp_path) as (coordinator, records):
        block = {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "resumed"}}
        sweep_id = coordinator.create_sweep(parse_sweep(grid([1, 2], integrations=block))).id
        failed = coordinator.next_trial(sweep_id, AGENT)
        assert isinstance(failed, Assignment)
        coordinator.finish_trial(failed.trial_id, failed.lease_id, TrialOutcome(TrialState.FAILED))
        finish_trials(coordinator, sweep_id, 1)
        assert records.wait_idle() and not open_trackers(sweep_id)
        assert parent() == ("FINISHED", "finished")
        coordinator.set_sweep_state(sweep_id, SweepState.RUNNING)
        assert records.wait_idle() and open_trackers(sweep_id)
        send_what_waits(records, sweep_id)
        assert parent() == ("RUNNING", "running")
        finish_trials(coordinator, sweep_id, 1)  # the failed configuration, run again
        assert records.wait_idle() and not open_trackers(sweep_id)
        assert parent() == ("FINISHED", "finished")
