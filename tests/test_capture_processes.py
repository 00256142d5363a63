"""A trial made of several processes (a pipeline of stages, worker processes): what each logs
reaches the coordinator, once, and the last value logged is the trial's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sweeper.trials import Trial, TrialState

pytest.importorskip("wandb")
from trackers_support import run_sweep  # noqa: E402

# Four stages run one after the other, each numbering its own logging calls from 0: two log with
# sweeper, then two with W&B (offline), all at steps 0, 1, 2.
PIPELINE = f"""
import subprocess, sys

STAGE = '''
import sys
scale = float(sys.argv[1])
if sys.argv[2] == "sweeper":
    import sweeper
    run = sweeper.init()
    for epoch in range(3):
        sweeper.log({{"acc": scale + epoch / 100}}, step=epoch)
else:
    import wandb
    run = wandb.init()
    for epoch in range(3):
        wandb.log({{"acc": scale + epoch / 100}}, step=epoch)
    run.summary["best_acc"] = scale + 0.02
    run.finish()
'''
for scale, library in ((0.1, "sweeper"), (0.2, "sweeper"), (0.3, "wandb"), (0.4, "wandb")):
    subprocess.run([{sys.executable!r}, "-c", STAGE, str(scale), library], check=True)
"""


def one_trial(folder: Path, script: str, metric: str) -> Trial:
    """The trial of a one-point sweep of ``script`` (W&B offline), which must finish."""
    program = folder / "train.py"
    program.write_text(script)
    sweep = {
        "method": "grid",
        "metric": {"name": metric, "goal": "maximize"},
        "parameters": {"x": {"value": 1}},
    }
    _, _, (trial,) = run_sweep(folder, sweep, program, agents=1)
    assert trial.state is TrialState.FINISHED, trial
    return trial


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_every_process_of_a_trial_counts_and_the_last_logged_value_wins(wandb_offline: Path) -> None:
    trial = one_trial(wandb_offline, PIPELINE, "acc")
    # Before, each stage's points had the first's seqs, and the store kept the first's only.
    scales = (0.1, 0.2, 0.3, 0.4)
    logged = [(step, pytest.approx(scale + step / 100)) for step in range(3) for scale in scales]
    assert trial.curve("acc") == logged
    assert trial.metric("acc") == pytest.approx(0.42)  # the last stage's, at the same step
    # Each W&B stage's summary, read once: the only records a writer marks to be read once.
    assert trial.curve("best_acc") == [(2, pytest.approx(0.32)), (2, pytest.approx(0.42))]
    lines = (wandb_offline / ".sweeper" / "trials" / trial.sweep_id / "1" / "metrics.jsonl").read_text()
    marked = [json.loads(line) for line in lines.splitlines() if '"once"' in line]
    assert [record["metrics"]["best_acc"] for record in marked] == [pytest.approx(0.32), pytest.approx(0.42)]
    assert marked[0]["once"] != marked[1]["once"]  # two processes, though their seqs are the same


def test_the_reader_numbers_lines_by_their_place_and_reads_a_resent_record_once(tmp_path: Path) -> None:
    from sweeper.agents.metrics import MetricTailer

    path = tmp_path / "metrics.jsonl"
    line = '{{"seq": 0, "step": {step}, "time": 1.0, "metrics": {{"m": {value}}}{once}}}\n'
    summary = line.format(step=1, value=9, once=', "once": "41-7"')
    path.write_text(line.format(step=0, value=1, once="") + line.format(step=1, value=2, once="") + summary)
    tailer = MetricTailer(path)
    assert [(p.seq, p.step, p.value) for p in tailer.read_points()] == [(0, 0, 1.0), (1, 1, 2.0), (2, 1, 9.0)]
    with path.open("a") as fh:  # the summary again (a stop cut its first send short), then a partial line
        fh.write(summary + "\n" + line.format(step=2, value=3, once="")[:20])
    assert tailer.read_points() == []
    with path.open("a") as fh:
        fh.write(line.format(step=2, value=3, once="")[20:])
    assert [(p.seq, p.value) for p in tailer.read_points()] == [(5, 3.0)]  # its place, blank lines counted
    # Read again from the start (a new reader of the same file): every line keeps its seq.
    again = MetricTailer(path).read_points()
    assert [(p.seq, p.value) for p in again] == [(0, 1.0), (1, 2.0), (2, 9.0), (5, 3.0)]


# W&B's cross-validation example, shortened: each fold trains in a worker process that clears
# W&B's variables and opens a run of its own, outside the sweep; the trial's run logs their mean.
CROSS_VALIDATION = """
import multiprocessing, os
import wandb

def fold(number, results):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        if key not in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
            del os.environ[key]
    run = wandb.init(group="cv", job_type="fold", name=f"fold-{number}")
    for epoch in range(3):
        run.log({"val_accuracy": 0.9 - number / 10 - (2 - epoch) / 100})
    run.summary["val_accuracy"] = 0.9 - number / 10
    run.finish()
    results.put(0.9 - number / 10)

if __name__ == "__main__":
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=fold, args=(n, results)) for n in range(2)]
    for worker in workers:
        worker.start()
    sweep_run = wandb.init()
    scores = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    sweep_run.log({"val_accuracy": sum(scores) / len(scores)})
    sweep_run.finish()
"""


def test_runs_a_script_takes_out_of_the_sweep_are_not_the_trials(wandb_offline: Path) -> None:
    trial = one_trial(wandb_offline, CROSS_VALIDATION, "val_accuracy")
    # As W&B's sweep reads it: the trial's run only. Before, the folds' epochs were the trial's
    # curve and the last fold's summary (0.8) its value.
    assert trial.curve("val_accuracy") == [(0, pytest.approx(0.85))]
    assert trial.metric("val_accuracy") == pytest.approx(0.85)


# A script that names its run itself (to resume it after a preemption, as W&B's docs suggest)
# stays in the sweep: its W&B run still belongs to the sweep, and the trial records what it logs.
OWN_RUN_ID = """
import os
import wandb

os.environ["WANDB_RUN_ID"] = "my-own-run"
run = wandb.init()
for epoch in range(3):
    run.log({"val_accuracy": 0.5 + epoch / 10})
run.finish()
"""


def test_a_run_the_script_names_itself_stays_the_trials(wandb_offline: Path) -> None:
    trial = one_trial(wandb_offline, OWN_RUN_ID, "val_accuracy")
    assert trial.metric("val_accuracy") == pytest.approx(0.7)
    assert len(trial.curve("val_accuracy")) == 3
