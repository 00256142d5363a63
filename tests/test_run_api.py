"""The in-script API: sweeper.init / log / Run, standalone, in a trial subprocess, in function mode."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import sweeper
from sweeper import _context
from sweeper.run import Config, TrialStopped, deep_merge

TRIAL_ENV = (
    "SWEEPER_SWEEP_ID",
    "SWEEPER_TRIAL_ID",
    "SWEEPER_TRIAL_NUMBER",
    "SWEEPER_TRIAL_DIR",
    "SWEEPER_CONFIG_PATH",
    "SWEEPER_METRICS_PATH",
)


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in TRIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    sweeper.run.finish()
    _context.set_current(None)


def test_standalone_uses_defaults_and_keeps_history_in_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = sweeper.init({"lr": 0.1, "model": {"depth": 2}}, project="ignored", name="also ignored")
    assert run.sweep_id is None and run.trial_number is None
    assert run.config["lr"] == 0.1 and run.config.lr == 0.1
    sweeper.log({"loss": 0.5})
    run.log({"loss": 0.25})
    assert [(r["seq"], r["step"], r["metrics"]) for r in run.history] == [
        (0, 0, {"loss": 0.5}),
        (1, 1, {"loss": 0.25}),
    ]
    assert run.summary == {"loss": 0.25}
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_values_written_to_the_summary_are_the_runs_last_word() -> None:
    run = sweeper.init()
    run.log({"acc": 0.7, "loss": 0.5}, step=3)
    run.summary["acc"] = 0.9  # the best epoch's, say: what W&B's sweeps would read
    run.summary["loss"] = 0.5  # as logged: nothing new to say
    run.summary["note"] = "not a number"
    run.summary["epochs_run"] = 4
    run.finish()
    assert [(r["seq"], r["step"], r["metrics"]) for r in run.history] == [
        (0, 3, {"acc": 0.7, "loss": 0.5}),
        (1, 3, {"acc": 0.9, "epochs_run": 4}),
    ]
    run.finish()  # once only
    assert len(run.history) == 2


def test_a_summary_value_lands_on_its_metrics_last_step() -> None:
    run = sweeper.init()
    for epoch in range(3):
        run.log({"val_acc": 0.5 + epoch / 10})
    run.log({"test_acc": 0.7})  # step 3: another metric's
    run.summary["val_acc"] = 0.9
    run.finish()
    # On val_acc's own last step: its curve gains no step, and stopping rules no iteration.
    assert run.history[-1] == {**run.history[-1], "step": 2, "metrics": {"val_acc": 0.9}}


def test_nested_config_reads_by_key_and_attribute() -> None:
    run = sweeper.init({"model": {"encoder": {"layers": 4}}, "lr": 1e-3})
    assert run.config.model.encoder.layers == 4
    assert run.config["model"]["encoder"]["layers"] == 4
    assert run.config["model"].encoder["layers"] == 4
    run.config.model.encoder.layers = 6  # writes through to the run's config
    assert run.config.as_dict() == {"model": {"encoder": {"layers": 6}}, "lr": 1e-3}
    with pytest.raises(AttributeError, match="dropout"):
        _ = run.config.dropout
    assert isinstance(run.config, Config) and len(run.config) == 2


def test_nested_config_values_are_dicts_as_in_wandb_config() -> None:
    # Scripts written for W&B save ``dict(wandb.config)`` as JSON and test nested values with
    # ``isinstance(value, dict)``.
    run = sweeper.init({"model": {"encoder": {"layers": 4}}, "lr": 1e-3})
    assert json.loads(json.dumps(dict(run.config))) == {"model": {"encoder": {"layers": 4}}, "lr": 1e-3}
    assert isinstance(run.config.model, dict) and isinstance(run.config["model"]["encoder"], dict)
    run.config["model"]["encoder"]["layers"] = 8  # plain item assignment writes through too
    assert run.config.model.encoder.layers == 8
    assert run.config.get("model").get("encoder").layers == 8
    assert run.config.as_dict() == {"model": {"encoder": {"layers": 8}}, "lr": 1e-3}
    assert type(run.config.as_dict()["model"]) is dict
    assert (
        [v.layers for _, v in run.config.model.items()]
        == [8]
        == [v.layers for v in run.config.model.values()]
    )
    restored = pickle.loads(pickle.dumps(dict(run.config)))
    assert type(restored["model"]) is dict and type(restored["model"]["encoder"]) is dict
    assert b"sweeper" not in pickle.dumps(dict(run.config))  # loads where sweeper is not installed
    # The config itself copies and pickles (DataLoader workers get it), and a copied section
    # still reads by attribute.
    for copied in (copy.deepcopy(run.config), pickle.loads(pickle.dumps(run.config))):
        assert copied.as_dict() == run.config.as_dict() and copied.model.encoder.layers == 8
    assert copy.deepcopy(run.config.model).encoder.layers == 8 == copy.copy(run.config.model).encoder.layers


def test_deep_merge_lets_trial_values_win_key_by_key() -> None:
    defaults = {"lr": 0.1, "model": {"depth": 2, "width": 64}, "tags": ["a"]}
    merged = deep_merge(defaults, {"model": {"depth": 5}, "lr": 0.3, "new": 1})
    assert merged == {"lr": 0.3, "model": {"depth": 5, "width": 64}, "tags": ["a"], "new": 1}
    assert defaults["model"] == {"depth": 2, "width": 64}


def test_step_semantics_follow_wandb() -> None:
    run = sweeper.init()
    run.log({"a": 1})  # step 0, then 1
    run.log({"a": 2}, step=5)  # step becomes 5 and stays
    run.log({"b": 3}, step=5)
    run.log({"a": 4})  # lands on 5, then 6
    run.log({"a": 5})  # 6
    run.log({"a": 6}, step=2)  # below the current step: ignored
    run.log({"a": 7})
    assert [r["step"] for r in run.history] == [0, 5, 5, 5, 6, 7]
    assert [r["seq"] for r in run.history] == [0, 1, 2, 3, 4, 5]
    assert run.step == 8


def test_numbers_bools_nan_inf_kept_other_values_skipped_with_one_warning(caplog) -> None:
    run = sweeper.init()
    with caplog.at_level(logging.WARNING, logger="sweeper.run"):
        run.log({"loss": float("nan"), "gain": float("inf"), "ok": True, "n": 3, "text": "hi"})
        run.log({"text": "again", "loss": 1.0})
    first, second = run.history
    assert math.isnan(first["metrics"]["loss"]) and first["metrics"]["gain"] == math.inf
    assert first["metrics"]["ok"] is True and first["metrics"]["n"] == 3
    assert "text" not in first["metrics"] and second["metrics"] == {"loss": 1.0}
    assert caplog.text.count("'text'") == 1


def test_scalar_like_objects_with_item_are_accepted() -> None:
    class Scalar:
        def item(self) -> float:
            return 2.5

    run = sweeper.init()
    run.log({"x": Scalar()})
    assert run.history[0]["metrics"] == {"x": 2.5}


def test_log_before_init_is_a_clear_error() -> None:
    sweeper.run.finish()
    with pytest.raises(RuntimeError, match="sweeper.init"):
        sweeper.log({"loss": 1.0})


def test_context_manager_finishes_the_run() -> None:
    with sweeper.init() as run:
        run.log({"a": 1})
    assert run.finished
    with pytest.raises(RuntimeError, match="finished"):
        run.log({"a": 2})


def test_init_again_finishes_the_previous_run() -> None:
    first = sweeper.init()
    second = sweeper.init()
    assert first.finished and not second.finished and first.id != second.id


def test_trial_subprocess_reads_config_from_env_and_writes_metric_lines(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.5, "model": {"depth": 8}}))
    script = textwrap.dedent(
        """
        import json, sweeper
        run = sweeper.init({"lr": 0.1, "epochs": 2, "model": {"depth": 2, "width": 16}})
        print(json.dumps({"config": run.config.as_dict(), "id": run.id, "sweep": run.sweep_id,
                          "number": run.trial_number, "dir": str(run.dir)}))
        for epoch in range(run.config.epochs):
            sweeper.log({"loss": 1.0 / (epoch + 1), "epoch": epoch})
        sweeper.log({"val": float("nan")}, step=10)
        """
    )
    env = dict(
        os.environ,
        SWEEPER_SWEEP_ID="sw1",
        SWEEPER_TRIAL_ID="11",
        SWEEPER_TRIAL_NUMBER="4",
        SWEEPER_TRIAL_DIR=str(tmp_path),
        SWEEPER_CONFIG_PATH=str(tmp_path / "config.json"),
        SWEEPER_METRICS_PATH=str(tmp_path / "metrics.jsonl"),
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen == {
        "config": {"lr": 0.5, "epochs": 2, "model": {"depth": 8, "width": 16}},
        "id": "sw1-4",
        "sweep": "sw1",
        "number": 4,
        "dir": str(tmp_path),
    }
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["seq"], r["step"], r["metrics"].keys()) for r in records] == [
        (0, 0, {"loss", "epoch"}),
        (1, 1, {"loss", "epoch"}),
        (2, 10, {"val"}),
    ]
    assert records[1]["metrics"] == {"loss": 0.5, "epoch": 1}
    assert math.isnan(records[2]["metrics"]["val"])
    assert all(isinstance(r["time"], float) for r in records)


def test_a_second_init_in_one_trial_keeps_numbering_its_lines(tmp_path: Path) -> None:
    # Points are idempotent on (trial, seq, name): restarting at seq 0 would lose the second run's values.
    (tmp_path / "config.json").write_text("{}")
    script = "import sweeper\nfor fold in range(2):\n    sweeper.init().log({'acc': fold})\n"
    env = dict(
        os.environ,
        SWEEPER_SWEEP_ID="sw1",
        SWEEPER_TRIAL_ID="12",
        SWEEPER_TRIAL_NUMBER="5",
        SWEEPER_TRIAL_DIR=str(tmp_path),
        SWEEPER_CONFIG_PATH=str(tmp_path / "config.json"),
        SWEEPER_METRICS_PATH=str(tmp_path / "metrics.jsonl"),
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["seq"], r["metrics"]) for r in records] == [(0, {"acc": 0}), (1, {"acc": 1})]


def test_unreadable_trial_config_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SWEEPER_CONFIG_PATH", str(tmp_path / "missing.json"))
    with pytest.raises(RuntimeError, match="missing.json"):
        sweeper.init()


def test_function_mode_context_feeds_the_sink_and_stops() -> None:
    records: list[dict] = []
    ctx = _context.TrialContext(
        sweep_id="sw",
        trial_id=1,
        trial_number=2,
        config={"lr": 0.9, "model": {"depth": 3}},
        sink=records.append,
    )
    _context.set_current(ctx)
    run = sweeper.init({"lr": 0.1, "model": {"depth": 1, "width": 4}})
    assert run.config.as_dict() == {"lr": 0.9, "model": {"depth": 3, "width": 4}}
    assert (run.sweep_id, run.trial_number, run.id) == ("sw", 2, "sw-2")
    sweeper.log({"loss": 1.0})
    ctx.request_stop("hyperband: below the rung's cut")
    with pytest.raises(TrialStopped, match="hyperband") as caught:
        sweeper.log({"loss": 0.9})
    assert caught.value.reason == "hyperband: below the rung's cut"
    assert [r["metrics"] for r in records] == [{"loss": 1.0}]
    assert run.history == []  # in function mode the agent holds the history


def test_trial_stopped_is_exported_and_not_caught_as_an_error() -> None:
    # Like SystemExit: a guard around logging (except Exception) lets the stop through.
    assert issubclass(sweeper.run.TrialStopped, BaseException)
    assert not issubclass(sweeper.run.TrialStopped, Exception)
    assert "TrialStopped" in sweeper.run.__all__


def test_importing_agents_and_run_stays_light() -> None:
    code = textwrap.dedent(
        """
        import sys
        import sweeper.agents, sweeper.run, sweeper.protocol
        heavy = ("numpy", "sqlalchemy", "wandb", "mlflow", "flask", "fastapi", "starlette",
                 "uvicorn", "aiohttp", "werkzeug", "torch", "pandas", "scipy")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
