"""The Python API: sweeper.sweep() and sweeper.agent(function=...) on the embedded store."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
from process_support import left_by_a_dead_agent

import sweeper
from sweeper.protocol import SweepNotFoundError
from sweeper.spec import SpecError
from sweeper.store import open_store
from sweeper.trials import TrialState


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # trial folders go under ./.sweeper
    return f"sqlite:///{tmp_path / 'api.db'}"


def test_sweep_and_agent_with_a_function(db: str) -> None:
    seen: list[dict] = []

    def train() -> None:
        run = sweeper.init(config={"lr": 1.0, "depth": 1})
        seen.append(dict(run.config))
        for step in range(3):
            run.log({"loss": run.config["lr"] * (3 - step) + run.config.depth})
        run.finish()

    sweep_id = sweeper.sweep(
        {
            "method": "grid",
            "metric": {"name": "loss"},
            "parameters": {"lr": {"values": [0.1, 0.2]}, "depth": {"values": [2, 3]}},
        },
        db=db,
    )
    reason = sweeper.agent(sweep_id, function=train, count=3, db=db)
    assert "3" in reason
    assert len(seen) == 3 and all(set(c) == {"lr", "depth"} for c in seen)

    with open_store(db) as store:
        trials = store.list_trials(sweep_id, with_history=True)
    assert [t.state for t in trials] == [TrialState.FINISHED] * 3
    # W&B's grid order: parameters sorted by name, so depth varies slowest.
    assert [(t.config["lr"], t.config["depth"]) for t in trials] == [(0.1, 2), (0.2, 2), (0.1, 3)]
    assert trials[0].curve("loss") == [(0, 0.1 * 3 + 2), (1, 0.1 * 2 + 2), (2, 0.1 + 2)]

    # The last combination, then the agent leaves by itself.
    reason = sweeper.agent(sweep_id, function=train, db=db)
    assert "complete" in reason and len(seen) == 4


def test_the_best_trial_and_the_trials_of_a_sweep(db: str) -> None:
    def train() -> None:
        run = sweeper.init()
        if run.config["x"] == 4:
            raise RuntimeError("diverged")  # failed: not a result, however its value looks
        for step in range(2):
            run.log({"loss": (run.config["x"] - 2) ** 2 + 1 / (step + 1), "other": -run.config["x"]})

    spec = {"method": "grid", "metric": {"name": "loss"}, "parameters": {"x": {"values": [1, 2, 3, 4]}}}
    sweep_id = sweeper.sweep(spec, db=db)
    assert sweeper.best_trial(sweep_id, db=db) is None, "no trial has run"
    sweeper.agent(sweep_id, function=train, db=db)
    best = sweeper.best_trial(sweep_id, db=db)
    assert best is not None and (best.number, best.config["x"], best.summary) == (
        2,
        2,
        {"loss": 0.5, "other": -2},
    )
    listed = sweeper.get_trials(sweep_id, db=db)
    assert [(t.number, t.config["x"], t.state) for t in listed] == [
        (1, 1, TrialState.FINISHED),
        (2, 2, TrialState.FINISHED),
        (3, 3, TrialState.FINISHED),
        (4, 4, TrialState.FAILED),
        (5, 4, TrialState.FAILED),  # its retry
    ]
    without_metric = sweeper.sweep({"method": "grid", "parameters": {"x": {"values": [1]}}}, db=db)
    sweeper.agent(without_metric, function=train, db=db)
    assert sweeper.best_trial(without_metric, db=db) is None, "nothing says which is best"
    with pytest.raises(SweepNotFoundError, match="nosuchsweep"):
        sweeper.best_trial("nosuchsweep", db=db)
    # As W&B's API names sweeps, "entity/project/ID", too.
    assert sweeper.best_trial(f"lab/vision/{sweep_id}", db=db) == best
    assert [t.number for t in sweeper.get_trials(f"vision/{sweep_id}", db=db)] == [1, 2, 3, 4, 5]


def test_a_raising_function_is_a_failed_trial_and_said(db: str, caplog: pytest.LogCaptureFixture) -> None:
    def train() -> None:
        sweeper.init()
        raise RuntimeError("diverged")

    sweep_id = sweeper.sweep(
        {"method": "grid", "parameters": {"x": {"value": 1}}, "sweeper": {"max_retries": 0}}, db=db
    )
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        sweeper.agent(sweep_id, function=train, db=db)
    # Said as it ends, as wandb.agent says it: a caller seldom reads the returned reason.
    assert "sweeper: trial 1 failed: RuntimeError: diverged" in [r.getMessage() for r in caplog.records]
    with open_store(db) as store:
        (trial,) = store.list_trials(sweep_id)
    assert trial.state is TrialState.FAILED and "RuntimeError: diverged" in trial.stderr_tail
    assert trial.exit_code == 1  # as the process running it would have exited


def test_a_value_the_function_returns_is_said_to_go_unrecorded_once(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Optuna's objective returns its score; here the metric must be logged."""

    def objective() -> float:
        return sweeper.init().config.x / 2

    sweep_id = sweeper.sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}}, db=db)
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        sweeper.agent(sweep_id, function=objective, db=db)
    said = [r.getMessage() for r in caplog.records if "returned" in r.getMessage()]
    assert said == [
        "trial 1: objective returned 0.5, which sweeper does not record (nor does wandb.agent): log the "
        "metric with sweeper.log({...}) or run.log({...})"
    ]


def test_a_function_that_exits_with_a_message_fails_with_exit_code_1(db: str) -> None:
    def train() -> None:
        sweeper.init()
        sys.exit("bad data")

    sweep_id = sweeper.sweep(
        {"method": "grid", "parameters": {"x": {"value": 1}}, "sweeper": {"max_retries": 0}}, db=db
    )
    sweeper.agent(sweep_id, function=train, db=db)
    with open_store(db) as store:
        (trial,) = store.list_trials(sweep_id)
    assert (trial.state, trial.exit_code) == (TrialState.FAILED, 1) and "bad data" in trial.stderr_tail


def test_sweep_rejects_a_broken_config_with_every_problem(db: str) -> None:
    with pytest.raises(SpecError) as err:
        sweeper.sweep({"method": "grid", "parameters": {"lr": {"min": 1, "max": 0}}, "run_cap": 0}, db=db)
    paths = {p.path for p in err.value.problems}
    assert {"parameters.lr", "run_cap"} <= paths or {"parameters.lr.min", "run_cap"} <= paths


def test_sweep_from_a_file(db: str, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("method: random\nrun_cap: 1\nparameters:\n  lr: {min: 1e-5, max: 1e-3}\n")
    sweep_id = sweeper.sweep(path, db=db)

    def train() -> None:
        run = sweeper.init()
        run.log({"lr": run.config["lr"]})

    sweeper.agent(sweep_id, function=train, db=db)
    with open_store(db) as store:
        (trial,) = store.list_trials(sweep_id)
    assert 1e-5 <= trial.config["lr"] <= 1e-3
    assert trial.summary == {"lr": trial.config["lr"]}


def test_a_value_written_to_the_summary_is_the_trials_value(db: str) -> None:
    sweep_id = sweeper.sweep(
        {"method": "grid", "metric": {"name": "acc", "goal": "maximize"}, "parameters": {"x": {"value": 1}}},
        db=db,
    )

    def train() -> None:
        run = sweeper.init()
        run.log({"acc": 0.5})
        run.summary["acc"] = 0.75  # W&B scripts often write the objective here at the end

    sweeper.agent(sweep_id, function=train, db=db)
    with open_store(db) as store:
        (trial,) = store.list_trials(sweep_id)
    assert trial.state is TrialState.FINISHED and trial.summary == {"acc": 0.75}
    assert trial.exit_code == 0  # as a command that returned


def test_a_function_over_the_time_limit_is_stopped_at_its_next_log(db: str) -> None:
    def train() -> None:
        run = sweeper.init()
        step = 0
        while step < 200:  # 20 s unless stopped
            try:  # a guard around logging, as scripts put one: the stop is not an error to catch
                run.log({"loss": 1.0 / (step + 1)}, step=step)
            except Exception as exc:
                print(f"could not log: {exc}")
            step += 1
            time.sleep(0.1)
        run.finish()

    sweep_id = sweeper.sweep(
        {
            "method": "grid",
            "metric": {"name": "loss"},
            "parameters": {"i": {"values": [1, 2]}},
            "sweeper": {"trial_timeout": 1},
        },
        db=db,
    )
    started = time.monotonic()
    sweeper.agent(sweep_id, function=train, db=db)
    assert time.monotonic() - started < 15
    with open_store(db) as store:
        trials = store.list_trials(sweep_id, with_history=True)
    # Both trials ran: the limit ends a trial, not the agent.
    assert [t.state for t in trials] == [TrialState.STOPPED] * 2
    assert {t.stop_reason for t in trials} == {"time limit: ran longer than 1s (sweeper.trial_timeout)"}
    assert all(len(t.curve("loss")) >= 5 for t in trials)


def test_the_agent_first_delivers_what_a_killed_agent_left_in_its_folder(db: str, tmp_path: Path) -> None:
    from sweeper.agents.spool import Spool, leftover_spools

    from sweeper.coordinator import Coordinator
    from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
    from sweeper.trials import MetricPoint

    sweep_id = sweeper.sweep(
        {"method": "grid", "metric": {"name": "loss"}, "parameters": {"i": {"values": [1, 2]}}}, db=db
    )
    with open_store(db) as store:  # an agent leased the first trial, logged, ended it, and was killed
        got = Coordinator(store).next_trial(sweep_id, AgentInfo(name="gone", host="h"))
        assert isinstance(got, Assignment)
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / str(got.trial_number)
        folder.mkdir(parents=True)
        spool = Spool.create(folder, got)
        left_by_a_dead_agent(spool)
        spool.append([MetricPoint("loss", 0.5, 0, 0, 1700000000.0)])
        spool.keep_outcome(TrialOutcome(TrialState.FINISHED, exit_code=0))

    def train() -> None:
        run = sweeper.init()
        run.log({"loss": 1.0})
        run.finish()

    sweeper.agent(sweep_id, function=train, db=db)
    with open_store(db) as store:
        trials = store.list_trials(sweep_id, with_history=True)
    assert [t.state for t in trials] == [TrialState.FINISHED] * 2
    assert trials[0].curve("loss") == [(0, 0.5)]  # the left-over report, delivered once
    assert list(leftover_spools(tmp_path)) == []


def test_exponent_bounds_that_look_like_values_warn(db: str) -> None:
    config = {
        "method": "random",
        "parameters": {"lr": {"distribution": "log_uniform", "min": 1e-4, "max": 0.1}},
    }
    with pytest.warns(
        UserWarning, match=r"parameters.lr: log_uniform takes base-e exponents .* use log_uniform_values"
    ):
        sweeper.sweep(config, db=db)


def test_wandb_style_project_and_entity_are_taken(db: str) -> None:
    """Calls written for wandb.sweep and wandb.agent carry project and entity: accepted as W&B takes them."""
    config = {"method": "grid", "project": "in-file", "parameters": {"x": {"values": [1]}}}
    sweep_id = sweeper.sweep(config, db=db, project="mine", entity="team")
    ran = []
    assert "complete" in sweeper.agent(
        sweep_id, function=lambda: ran.append(1), db=db, project="mine", entity="team"
    )
    with open_store(db) as store:
        stored = store.get_sweep(sweep_id).spec
    assert (stored["project"], stored["entity"], ran) == ("mine", "team", [1])


def test_wandb_sweep_and_agent_calls_run_as_written(db: str) -> None:
    """W&B's quickstart form (``sweep=``, a function that returns the config, entity and project
    by position) and wandb.agent's other arguments, under their W&B names."""
    sweep_id = sweeper.sweep(
        sweep=lambda: {"method": "grid", "parameters": {"x": {"values": [1, 2, 3]}}}, project="p", db=db
    )
    positional = sweeper.sweep({"method": "grid", "parameters": {"x": {"value": 1}}}, "team", "proj", db=db)
    with open_store(db) as store:
        stored = store.get_sweep(positional).spec
    assert (stored["entity"], stored["project"]) == ("team", "proj")
    with pytest.raises(ValueError, match="prior_runs: sweeper cannot count W&B runs"):
        sweeper.sweep({"method": "grid", "parameters": {"x": {"value": 1}}}, prior_runs=["abc123"], db=db)

    def fails() -> None:
        raise RuntimeError("boom")

    # Two failures in a row end this agent (sweeper's default is three): wandb.agent's name for it.
    reason = sweeper.agent(
        f"team/p/{sweep_id}",  # the sweep's path, as wandb.agent takes it
        fails,
        "team",
        "p",
        3,
        forward_signals=True,
        term_timeout=1,
        max_consecutive_failed_runs=2,
        db=db,
    )
    assert "2 trials in a row failed" in reason, reason
    with open_store(db) as store:
        assert [t.state for t in store.list_trials(sweep_id)] == [TrialState.FAILED] * 2
    # sweeper.agent(ID, train, 5) as an older sweeper took it: the third argument is entity.
    with pytest.raises(TypeError, match="the third argument is entity; give count=N"):
        sweeper.agent(sweep_id, fails, 5, db=db)


def test_an_agent_on_a_store_that_is_not_there_makes_none(tmp_path: Path) -> None:
    from sweeper.store import StoreError

    typo = tmp_path / "sweeps.dbb"
    with pytest.raises(StoreError, match=f"no store at {typo}"):
        sweeper.agent("abc", function=lambda: None, db=f"sqlite:///{typo}")
    assert not typo.exists()
