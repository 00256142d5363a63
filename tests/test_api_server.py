"""The Python API with a ``sweeper server``: ``sweeper.sweep()`` and ``sweeper.agent()`` given
its URL and token, or finding them in SWEEPER_COORDINATOR and SWEEPER_TOKEN as the commands do.

Real parts: a `sweeper server` subprocess on 127.0.0.1 over SQLite, and function trials in this
process that report to it over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import sweeper
from sweeper.connect import connect
from sweeper.trials import TrialState

pytest.importorskip("fastapi")
from server_helpers import QUIET, TOKEN, ServerProcess, serving  # noqa: E402

GRID = {
    "method": "grid",
    "metric": {"name": "loss", "goal": "minimize"},
    "parameters": {"x": {"values": [1, 2, 3]}},
}


def train() -> None:
    run = sweeper.init()
    for step in range(3):
        run.log({"loss": run.config.x / (step + 1)})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with serving(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server", extra_args=QUIET) as server:
        yield server


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder of its own, with no sweeper variables set."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in ("SWEEPER_COORDINATOR", "SWEEPER_TOKEN", "SWEEPER_DB"):
        monkeypatch.delenv(name, raising=False)
    return folder


def test_function_trials_take_their_configurations_from_a_server(
    server: ServerProcess, elsewhere: Path
) -> None:
    sweep_id = sweeper.sweep(GRID, coordinator=server.url, token=TOKEN)
    said = sweeper.agent(sweep_id, function=train, coordinator=server.url, token=TOKEN)
    assert said == f"sweep {sweep_id} is complete: all 3 grid combinations have run"
    trials = server.client().trials(sweep_id, with_history=True)
    assert sorted((t.config["x"], t.state) for t in trials) == [(x, TrialState.FINISHED) for x in (1, 2, 3)]
    assert all(len(t.history or ()) == 3 for t in trials)
    best = sweeper.best_trial(sweep_id, coordinator=server.url, token=TOKEN)
    assert best is not None and (best.config["x"], best.summary["loss"]) == (1, 1 / 3)
    listed = sweeper.get_trials(sweep_id, coordinator=server.url, token=TOKEN)
    assert [(t.number, t.config["x"]) for t in listed] == [(t.number, t.config["x"]) for t in trials]
    assert not (elsewhere / ".sweeper" / "sweeper.db").exists(), "no store of its own was made here"


def test_the_server_named_in_the_environment_is_used(
    server: ServerProcess, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEPER_COORDINATOR", server.url)
    monkeypatch.setenv("SWEEPER_TOKEN", TOKEN)
    sweep_id = sweeper.sweep(GRID)
    assert [s.id for s in server.client().list_sweeps()] == [sweep_id]
    sweeper.agent(sweep_id, function=train, count=1)
    (trial,) = server.client().trials(sweep_id)
    assert trial.state is TrialState.FINISHED
    assert not (elsewhere / ".sweeper" / "sweeper.db").exists(), "no store of its own was made here"


def test_a_wrong_token_is_refused_before_any_trial_runs(server: ServerProcess, elsewhere: Path) -> None:
    sweep_id = sweeper.sweep(GRID, coordinator=server.url, token=TOKEN)
    with pytest.raises(PermissionError, match="--token or the SWEEPER_TOKEN"):
        sweeper.agent(sweep_id, function=train, coordinator=server.url, token="not-the-token")
    assert server.client().trials(sweep_id) == []


@pytest.mark.parametrize("count", ["2", -1, 1.5, True])
def test_a_count_that_is_not_a_number_of_trials_is_refused_at_once(elsewhere: Path, count: object) -> None:
    sweep_id = sweeper.sweep(GRID)
    with pytest.raises(TypeError, match=r"count: expected a whole number of trials, 0 or more"):
        sweeper.agent(sweep_id, function=train, count=count)  # type: ignore[arg-type]


def test_a_function_that_is_not_callable_is_refused_at_once(elsewhere: Path) -> None:
    sweep_id = sweeper.sweep(GRID)
    with pytest.raises(TypeError, match="function: expected a function that takes no arguments"):
        sweeper.agent(sweep_id, function="train")  # type: ignore[arg-type]
    with connect() as coordinator:
        assert coordinator.trials(sweep_id) == [], "no trial was used up"
