"""Checkpoints in MLflow's artifact store: a real `mlflow server`, publish and fetch, the
``checkpoints: mlflow`` shorthand, and a population-based sweep whose members move through it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from sweeper.agents.checkpoints import CheckpointHook
from sweeper.agents.trialdir import TrialDir

from sweeper.checkpoints import (
    SNAPSHOTS_FOLDER,
    CheckpointError,
    checkpoint_location,
    fetch,
    publish,
    remove,
    take_snapshot,
)
from sweeper.protocol import Assignment, TrialOutcome
from sweeper.spec import SpecError, parse_sweep
from sweeper.trials import TrialState

pytest.importorskip("mlflow")
from cli_support import restored_from, run_and_list, toy_pbt_sweep  # noqa: E402
from trackers_support import MlflowServer, free_port  # noqa: E402


def test_publish_replaces_and_fetch_reads_the_newest_whole_version(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    where = checkpoint_location(f"mlflow-artifacts://127.0.0.1:{mlflow_server.port}/ckpt", "sw", 3)
    assert fetch(where, tmp_path / "nothing", base=tmp_path) is False
    source = tmp_path / "checkpoint"
    (source / "sub").mkdir(parents=True)
    for step in range(3):
        (source / "state.json").write_text(json.dumps({"step": step}))
        (source / "sub" / "w.bin").write_bytes(bytes([step]) * 100)
        assert publish(source, where, base=tmp_path) is True
    into = tmp_path / "restore"
    assert fetch(where, into, base=tmp_path) is True
    assert json.loads((into / "state.json").read_text()) == {"step": 2}
    assert (into / "sub" / "w.bin").read_bytes() == bytes([2]) * 100
    # The newest version and the one before it (a reader may still be downloading it) are kept.
    stored = mlflow_server.folder / "mlartifacts" / "ckpt" / "sw" / "3"
    assert len(list((stored / "versions").iterdir())) == 2
    assert (stored / "LATEST").read_text() in {p.name for p in (stored / "versions").iterdir()}


def test_remove_leaves_nothing_to_fetch(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    root = f"mlflow-artifacts://127.0.0.1:{mlflow_server.port}/ckpt"
    doomed, kept = checkpoint_location(root, "sw", 1), checkpoint_location(root, "sw", 2)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "w.bin").write_bytes(b"w" * 100)
    for where in (doomed, kept):
        for _ in range(2):  # two versions each
            assert publish(tmp_path / "checkpoint", where, base=tmp_path)
    remove(doomed, base=tmp_path)
    remove(doomed, base=tmp_path)  # again: nothing there, nothing to do
    remove(checkpoint_location(root, "sw", 9), base=tmp_path)  # never published
    assert fetch(doomed, tmp_path / "a", base=tmp_path) is False
    assert fetch(kept, tmp_path / "b", base=tmp_path) is True
    stored = mlflow_server.folder / "mlartifacts" / "ckpt" / "sw"
    assert not any(p.is_file() for p in (stored / "1").rglob("*"))  # rglob of a missing folder: none
    assert (stored / "2" / "LATEST").exists()


def test_the_servers_check_takes_credentials_in_the_uri_and_never_shows_them(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sweeper.checkpoints.remote import _check_answers

    _check_answers(f"http://alice:s3cret@127.0.0.1:{mlflow_server.port}")  # it answers: no error
    # A location without a server of its own is read where MLFLOW_TRACKING_URI points, credentials and all.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{mlflow_server.port}")
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "a").write_text("x")
    assert publish(tmp_path / "checkpoint", "mlflow-artifacts:/ckpt/sw/7", base=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{free_port()}")
    with pytest.raises(CheckpointError, match="does not answer") as caught:
        publish(tmp_path / "checkpoint", "mlflow-artifacts:/ckpt/sw/7", base=tmp_path)
    assert "s3cret" not in str(caught.value)


def test_an_unreachable_server_is_a_checkpoint_error_naming_the_location_within_seconds(
    tmp_path: Path,
) -> None:
    # With MLflow's default retries (not turned down here), a server that is down held each call for minutes.
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "a").write_text("x")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    for port in (free_port(), silent.getsockname()[1]):
        where = f"mlflow-artifacts://127.0.0.1:{port}/ckpt/sw/1"
        started = time.monotonic()
        with pytest.raises(
            CheckpointError, match="cannot publish the checkpoint to mlflow-artifacts://127.0.0.1"
        ):
            publish(tmp_path / "checkpoint", where, base=tmp_path)
        with pytest.raises(CheckpointError, match=r"at mlflow-artifacts://127.0.0.1.*does not answer"):
            fetch(where, tmp_path / "restore", base=tmp_path)
        assert time.monotonic() - started < 60
    silent.close()


def pbt_sweep(integrations: dict | None) -> dict:
    sweep = {
        "method": "pbt",
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {"lr": {"values": [0.01, 0.3]}},
        "sweeper": {"pbt": {"population": 2, "checkpoints": "mlflow"}},
    }
    return sweep if integrations is None else {**sweep, "integrations": integrations}


@pytest.mark.parametrize(
    ("integrations", "root"),
    [
        ({"mlflow": {"tracking_uri": "http://mlflow.lan:5000/"}}, "mlflow-artifacts://mlflow.lan:5000/sweeper-checkpoints"),
        ({"mlflow": {"tracking_uri": "https://mlflow.lan"}}, "mlflow-artifacts://mlflow.lan/sweeper-checkpoints"),
        ({"mlflow": True}, "mlflow-artifacts:/sweeper-checkpoints"),  # the agents' MLFLOW_TRACKING_URI
    ],
)  # fmt: skip
def test_checkpoints_mlflow_is_the_sweeps_mlflow_server(integrations: dict, root: str) -> None:
    assert parse_sweep(pbt_sweep(integrations)).options.pbt.checkpoints == root


def test_checkpoints_mlflow_takes_the_server_sweeper_runs_mlflow_flag_names(tmp_path: Path) -> None:
    from sweeper.integrations.cli import with_trackers

    from sweeper.cli.common import load_spec

    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(pbt_sweep(None)))
    spec = load_spec(
        str(tmp_path / "pbt.yaml"), lambda raw: with_trackers(raw, "http://mlflow.lan:5000", False)
    )
    assert spec.options.pbt.checkpoints == "mlflow-artifacts://mlflow.lan:5000/sweeper-checkpoints"


@pytest.mark.parametrize(
    ("integrations", "message"),
    [
        (None, "add integrations: {mlflow: {tracking_uri: http://host:port}}"),
        ({"mlflow": {"enabled": False}}, "add integrations: {mlflow: {tracking_uri: http://host:port}}"),
        ({"wandb": True}, "add integrations: {mlflow: {tracking_uri: http://host:port}}"),
        ({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}, "must be http(s)://host:port, got 'sqlite:///mlflow.db'"),
    ],
)  # fmt: skip
def test_checkpoints_mlflow_without_an_mlflow_server_is_refused(
    integrations: dict | None, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep(pbt_sweep(integrations))
    assert [(p.path, message in p.message) for p in caught.value.problems] == [
        ("sweeper.pbt.checkpoints", True)
    ]


@pytest.mark.slow
def test_members_restart_from_checkpoints_in_mlflow(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    sweep = toy_pbt_sweep(checkpoints="mlflow")
    sweep["integrations"] = {"mlflow": {"tracking_uri": mlflow_server.uri, "experiment": "pbt"}}
    # Slower steps than the toy's: the second member's start waits for its MLflow run, made after
    # the first member's, and a member that lags by more than one perturbation interval finds its
    # donor already done (a donor at its last step has nothing left to hand on).
    sweep["parameters"]["sleep"] = {"value": 0.5}
    sweep_id, trials = run_and_list(tmp_path, sweep, "--agents", "2")
    restarted = [t for t in trials.values() if t["restore_from"]]
    assert restarted, [(t["number"], t["state"], t["stop_reason"]) for t in trials.values()]
    for trial in restarted:
        assert trial["restore_from"].startswith(f"mlflow-artifacts://127.0.0.1:{mlflow_server.port}/")
        donor = int(trial["restore_from"].rsplit("/", 1)[1])
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / str(trial["number"])
        assert restored_from(folder)["trial"] == donor  # fetched from MLflow
    stored = mlflow_server.folder / "mlartifacts" / "sweeper-checkpoints" / sweep_id
    kept = {int(p.name) for p in stored.iterdir() if (p / "LATEST").exists()}
    saved = {n for n, t in trials.items() if t["curves"].get("score")}
    assert kept <= saved
    for member in {t["member"] for t in trials.values()}:  # each member's model stays
        assert max(n for n in saved if trials[n]["member"] == member) in kept
    assert not (tmp_path / ".sweeper" / "checkpoints").exists()  # nothing went to the local default


def test_a_store_that_does_not_answer_holds_up_neither_metrics_nor_heartbeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections into its backlog, never answers
    port = silent.getsockname()[1]
    trial_dir = TrialDir(tmp_path / ".sweeper" / "trials" / "sw" / "1")
    trial_dir.path.mkdir(parents=True)
    assignment = Assignment(
        sweep_id="sw", trial_id=1, trial_number=1, lease_id="l", lease_seconds=30.0, config={}, command=[],
        program=None, metric_name="loss", checkpoint_to=f"mlflow-artifacts://127.0.0.1:{port}/c/sw/1",
    )  # fmt: skip
    hook = CheckpointHook()
    hook.on_start(assignment, trial_dir, {})
    (trial_dir.path / "checkpoint" / "state.json").write_text("{}")
    take_snapshot(trial_dir.path / "checkpoint", trial_dir.path / SNAPSHOTS_FOLDER)
    hook.on_metrics(
        assignment, [{"seq": 0, "step": 0, "metrics": {"loss": 1.0}}]
    )  # returns: the agent goes on
    deadline = time.monotonic() + 60
    while hook._publishing != 1:  # the upload is under way on the hook's own thread, and waiting
        assert time.monotonic() < deadline
        time.sleep(0.05)
    silent.close()  # the store goes away: the upload fails, and the end of the trial is not held up
    hook.on_end(assignment, TrialOutcome(TrialState.STOPPED), trial_dir)
    assert hook._publishing is None and not (trial_dir.path / SNAPSHOTS_FOLDER).exists()
