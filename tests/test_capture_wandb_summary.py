"""What a script writes to W&B's run summary itself reaches the coordinator, as W&B's sweeps read it:
real sweeps, real scripts, W&B offline, read back from what each run wrote."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sweeper.trials import Trial, TrialState

pytest.importorskip("wandb")
from trackers_support import offline_runs, run_sweep  # noqa: E402

# Best accuracy kept in the summary only, written each time it improves, in one of three ways; the
# run then ends by finish(), by the script just exiting, or by a stop (SIGTERM).
SUMMARY_ONLY = """
import os, pathlib, time
import wandb

run = wandb.init()
how, end = wandb.config.case.split("/")
best = 0.0
for acc in (0.5, 0.75, 0.625):
    wandb.log({"loss": 1 - acc})
    if acc > best:
        best = acc
        if how == "item":
            wandb.run.summary["best_val_acc"] = best
        elif how == "wandb":
            wandb.summary.update({"best_val_acc": best})
        else:
            run.summary.update({"best_val_acc": best, "eval": {"acc": best, "name": "not a number"}})
if end == "finish":
    run.finish()
elif end == "stopped":
    (pathlib.Path(os.environ["SWEEPER_TRIAL_DIR"]) / "hanging").write_text("1")
    time.sleep(120)
"""

# val_loss logged each epoch, then the best of them written to the summary.
SUMMARY_OVERRIDES_LOG = """
import wandb

run = wandb.init()
losses = [wandb.config.lr * x for x in (5, 2, 4, 3)]
for val_loss in losses:
    wandb.log({"val_loss": val_loss})
wandb.log({"test_loss": 0.5})  # step 4: another metric's
wandb.run.summary["val_loss"] = min(losses)
if wandb.config.lr > 0.15:
    run.finish()
"""

# wandb.log only (and reads of the summary wandb makes of it), or also summary writes: one that a
# later wandb.log of the same key replaces, as in W&B's summary, and one at the end.
LOG_ONLY = """
import wandb

run = wandb.init()
for step in range(4):
    if wandb.config.write and step == 1:
        run.summary["loss"] = 0.0
    wandb.log({"loss": 1 / (step + 1)})
    run.summary.get("loss")
if wandb.config.write:
    run.summary["best_loss"] = 0.25
run.finish()
"""


# W&B keeps the aggregates define_metric asks for in the summary (val_acc.max), where a sweep's
# metric can name them.
DEFINED_SUMMARIES = """
import wandb

run = wandb.init()
wandb.define_metric("val_acc", summary="max")
run.define_metric("loss/*", summary="min,mean")
for acc in (0.5, wandb.config.peak, 0.7):
    wandb.log({"val_acc": acc, "loss/train": 1 - acc})
run.finish()
"""


# How W&B picks and computes them: an exact name before a glob, a later call without a summary
# keeps it, upper case, one value per step (the last), NaN once a NaN was logged, brackets.
DEFINED_EDGE_CASES = """
import wandb

run = wandb.init()
wandb.define_metric("*", summary="min")
wandb.define_metric("acc", summary="MAX")
wandb.define_metric("mg", summary="max")
wandb.define_metric("mg", step_metric="epoch")
wandb.define_metric("x[1]", summary="last,mean")
wandb.define_metric("nanny", summary="max")
for i, a in enumerate((0.5, wandb.config.peak, 0.7)):
    wandb.log({"v": 0.01}, commit=False)
    nanny = float("nan") if i == 1 else a
    wandb.log({"acc": a, "mg": a * 2, "x[1]": a + 1, "v": a, "nanny": nanny, "epoch": i})
run.finish()
"""


# W&B drops a value logged at a step below the run's current one (with a warning of its own).
BACKWARDS = """
import wandb

run = wandb.init()
wandb.log({"loss": 0.5}, step=5)
wandb.log({"loss": 0.1}, step=3)
wandb.log({"loss": 0.4}, step=6)
run.finish()
"""


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def _sweep(folder: Path, script: str, metric: dict[str, str], parameters: dict[str, Any]) -> list[Trial]:
    program = folder / "train.py"
    program.write_text(script)
    sweep = {
        "method": "grid",
        "metric": metric,
        "parameters": parameters,
        "sweeper": {"max_retries": 0},
        "integrations": {"wandb": {"project": "summary", "mode": "offline"}},
    }
    _, _, trials = run_sweep(folder, sweep, program, agents=2)
    return trials


def _wandb_summaries(folder: Path, trials: list[Trial]) -> dict[int, dict[str, Any]]:
    """Each trial's run summary as W&B itself keeps it, by trial number."""
    runs = {run["run_id"]: run["summary"] for run in offline_runs(folder)}
    return {t.number: runs[f"{t.sweep_id}-{t.number}"] for t in trials}


def test_a_metric_only_in_the_summary_is_the_trials_value(wandb_env: Path) -> None:
    cases = ["item/exit", "wandb/finish", "run/finish", "item/stopped"]
    trials = _sweep(
        wandb_env,
        SUMMARY_ONLY,
        {"name": "best_val_acc", "goal": "maximize"},
        {"case": {"values": cases}},
    )
    assert sorted(t.config["case"] for t in trials) == sorted(cases)
    summaries = _wandb_summaries(wandb_env, trials)
    for trial in trials:
        stopped = trial.config["case"].endswith("stopped")
        assert trial.state is (TrialState.STOPPED if stopped else TrialState.FINISHED), trial
        assert trial.metric("best_val_acc") == 0.75, trial.config
        # Three writes, one point: sent once when the run ends, at the last logged step.
        assert trial.curve("best_val_acc") == [(2, 0.75)], trial.config
        assert trial.curve("loss") == [(0, 0.5), (1, 0.25), (2, 0.375)]
        assert summaries[trial.number]["best_val_acc"] == 0.75
        if trial.config["case"].startswith("run/"):
            assert trial.metric("eval.acc") == 0.75
            assert "eval.name" not in trial.summary


def test_a_summary_write_at_the_end_overrides_the_logged_value(wandb_env: Path) -> None:
    trials = _sweep(
        wandb_env,
        SUMMARY_OVERRIDES_LOG,
        {"name": "val_loss", "goal": "minimize"},
        {"lr": {"values": [0.1, 0.2]}},
    )
    assert [t.state for t in trials] == [TrialState.FINISHED] * 2
    summaries = _wandb_summaries(wandb_env, trials)
    for trial in trials:
        lr = trial.config["lr"]
        logged = [(step, lr * x) for step, x in enumerate((5, 2, 4, 3))]
        assert trial.metric("val_loss") == lr * 2 == summaries[trial.number]["val_loss"]
        # The logged curve, then exactly one more point: the summary's, at val_loss's last step.
        assert trial.curve("val_loss") == [*logged, (3, lr * 2)]
        assert len(trial.history or ()) == len(logged) + 2  # and test_loss's one


def test_wandb_log_alone_adds_no_summary_point(wandb_env: Path) -> None:
    trials = _sweep(
        wandb_env,
        LOG_ONLY,
        {"name": "loss", "goal": "minimize"},
        {"write": {"values": [False, True]}},
    )
    assert [t.state for t in trials] == [TrialState.FINISHED] * 2
    summaries = _wandb_summaries(wandb_env, trials)
    logged = [(step, 1 / (step + 1)) for step in range(4)]
    for trial in trials:
        assert trial.curve("loss") == logged
        assert trial.metric("loss") == 0.25 == summaries[trial.number]["loss"]
        if trial.config["write"]:
            assert [(p.name, p.step, p.value) for p in trial.history or () if p.name != "loss"] == [
                ("best_loss", 3, 0.25)
            ]
            assert len(trial.history or ()) == len(logged) + 1
        else:  # one point per wandb.log call, none for the summary wandb keeps of them
            assert len(trial.history or ()) == len(logged)


def test_aggregates_define_metric_keeps_in_the_summary_reach_the_sweep(wandb_env: Path) -> None:
    trials = _sweep(
        wandb_env,
        DEFINED_SUMMARIES,
        {"name": "val_acc.max", "goal": "maximize"},
        {"peak": {"values": [0.8, 0.9]}},
    )
    assert [t.state for t in trials] == [TrialState.FINISHED] * 2
    summaries = _wandb_summaries(wandb_env, trials)
    for trial in trials:
        peak = trial.config["peak"]
        kept = summaries[trial.number]
        assert trial.metric("val_acc.max") == peak == kept["val_acc"]["max"]
        assert trial.metric("loss/train.min") == pytest.approx(kept["loss/train"]["min"])
        assert trial.metric("loss/train.mean") == pytest.approx(kept["loss/train"]["mean"])
        assert trial.curve("val_acc") == [(0, 0.5), (1, peak), (2, 0.7)]  # the curve as logged
        # One more point, at the last logged step, with every aggregate.
        extra = [(p.name, p.step) for p in trial.history or () if "." in p.name]
        assert sorted(extra) == [("loss/train.mean", 2), ("loss/train.min", 2), ("val_acc.max", 2)]


def test_aggregates_follow_wandbs_rules_for_names_calls_and_values(wandb_env: Path) -> None:
    (trial,) = _sweep(
        wandb_env, DEFINED_EDGE_CASES, {"name": "acc.max", "goal": "maximize"}, {"peak": {"value": 0.9}}
    )
    kept = _wandb_summaries(wandb_env, [trial])[trial.number]
    assert trial.state is TrialState.FINISHED
    for name, mode in [
        ("acc", "max"),
        ("mg", "max"),
        ("v", "min"),
        ("x[1]", "last"),
        ("x[1]", "mean"),
        ("epoch", "min"),
    ]:
        assert trial.metric(f"{name}.{mode}") == pytest.approx(kept[name][mode]), (name, mode)
    assert kept["nanny"]["max"] == "NaN" and math.isnan(trial.metric("nanny.max"))
    assert trial.metric("acc.min") is None  # the exact name's summary, not the glob's


def test_values_wandb_drops_for_a_step_gone_back_are_dropped_too(wandb_env: Path) -> None:
    (trial,) = _sweep(wandb_env, BACKWARDS, {"name": "loss", "goal": "minimize"}, {"x": {"value": 1}})
    run = next(r for r in offline_runs(wandb_env) if r["run_id"] == f"{trial.sweep_id}-{trial.number}")
    kept = [(row["_step"], row["loss"]) for row in run["history"] if "loss" in row]
    assert trial.curve("loss") == kept == [(5, 0.5), (6, 0.4)]
