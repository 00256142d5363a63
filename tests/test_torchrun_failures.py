"""Why a trial launched with torchrun failed: the failed worker's words, not torchrun's report.

torchrun ends a failed run with about 40 lines of its own (its launcher's traceback, a summary
between rows of "="), the whole of a trial's stored stderr tail; the worker's error is above them.
These run real torchrun with two workers on the CPU (gloo).
"""

from __future__ import annotations

import subprocess

import pytest
from cli_support import SCRIPTS, SWEEPER, sweep_id_of
from sweeper.agents.stderr import stderr_tail, telling_line
from test_e2e_run import trials_json, write_sweep

pytest.importorskip("torch.distributed.run")

TORCHRUN = ["${interpreter}", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


@pytest.mark.slow
def test_the_failed_workers_error_is_the_reason_and_the_tail_keeps_it(tmp_path) -> None:
    sweep = write_sweep(
        tmp_path,
        {"mode": {"values": ["raise", "abort", "exit", "import"]}},
        program=str(SCRIPTS / "torchrun_worker.py"),
        command=[*TORCHRUN, "${program}", "${args}"],
    )
    ran = subprocess.run(
        [SWEEPER, "run", str(sweep), "--agents", "4", "--count", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    sweep_id = sweep_id_of(ran.stdout)
    trials = {t["config"]["mode"]: t for t in trials_json(tmp_path, sweep_id)}
    said = {
        mode: next(line for line in ran.stdout.splitlines() if f"trial {t['number']} failed" in line)
        for mode, t in trials.items()
    }

    assert said["raise"].endswith(": [rank1]: ValueError: worker one cannot go on"), said["raise"]
    assert said["abort"].endswith(": worker rank 1 was killed by SIGABRT (exit code -6)"), said["abort"]
    # No words of its own: how it ended; neither its warnings nor torch's are taken for its reason.
    assert said["exit"].endswith(": worker rank 1 ended with exit code 3"), said["exit"]
    assert (
        "ModuleNotFoundError: No module named 'no_such_module_for_this_trial' (worker rank" in said["import"]
    )
    for mode, trial in trials.items():
        tail = trial["stderr_tail"]
        # The launcher's own traceback and log lines are left out, its summary kept.
        assert (
            "launcher/api.py" not in tail and "torch/distributed/elastic/multiprocessing/api.py" not in tail
        )
        assert "Root Cause (first observed failure):" in tail and "ChildFailedError" in tail, tail
        assert "a warning of the script's own" in tail or mode in ("import", "raise"), tail  # raise: too deep
    raised = trials["raise"]["stderr_tail"]
    assert "[rank1]:     deeper(n - 1)" in raised and "[rank1]: Traceback" not in raised  # cut off above

    # A window that begins inside the launcher's traceback leaves its frames out all the same.
    log = tmp_path / ".sweeper" / "trials" / sweep_id / str(trials["exit"]["number"]) / "stderr.log"
    text = log.read_text()
    inside = len(text) - text.index("launcher/api.py") + 10
    cut = stderr_tail(log, max_bytes=inside)
    assert "launcher/api.py" not in cut and "  File " not in cut, cut
    assert telling_line(cut) == "worker rank 1 ended with exit code 3"
    # A report that is not the last thing printed (a script that ran torchrun went on) is not the reason.
    went_on = trials["raise"]["stderr_tail"] + "\nRuntimeError: the fallback failed too"
    assert telling_line(went_on) == "RuntimeError: the fallback failed too"
    # What a process's shutdown prints after the report leaves it the report.
    shutdown = (
        "/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: "
        "There appear to be 1 leaked semaphore objects to clean up at shutdown\n"
        "  warnings.warn('resource_tracker: There appear to be %d '"
    )
    after = trials["raise"]["stderr_tail"] + "\n" + shutdown
    assert telling_line(after) == "[rank1]: ValueError: worker one cannot go on"
    # torchrun --tee puts each worker's role and local rank before its lines, also before the
    # lines of an exception raised before the process group was made (no [rankN] there).
    teed = "\n".join(
        f"[default1]:{line}" if line.startswith("[rank1]") else line for line in raised.splitlines()
    )
    assert telling_line(teed) == "[rank1]: ValueError: worker one cannot go on"
    early = trials["import"]["stderr_tail"].splitlines()
    report = early.index(next(line for line in early if line.startswith("torch.distributed.elastic")))
    early_teed = "\n".join([*(f"[trainer-a1]:{line}" for line in early[:report]), *early[report:]])
    assert "ModuleNotFoundError: No module named 'no_such_module_for_this_trial' (worker rank" in (
        telling_line(early_teed) or ""
    ), early_teed


@pytest.mark.slow
def test_the_reason_survives_the_summary_of_many_workers(tmp_path) -> None:
    """torchrun's summary gives each other failed worker seven lines: with five workers, more than
    a trial's stored tail; each is kept as one line, the first few of them."""
    sweep = write_sweep(
        tmp_path,
        {"mode": {"value": "raise"}},
        program=str(SCRIPTS / "torchrun_worker.py"),
        command=[*TORCHRUN[:-1], "--nproc-per-node=5", "${program}", "${args}"],
    )
    ran = subprocess.run(
        [SWEEPER, "run", str(sweep), "--count", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ": [rank1]: ValueError: worker one cannot go on" in ran.stdout, ran.stdout + ran.stderr
    (trial,) = trials_json(tmp_path, sweep_id_of(ran.stdout))
    tail = trial["stderr_tail"].splitlines()
    assert "[rank1]: ValueError: worker one cannot go on" in tail
    assert sum(line.startswith("[") and ", exitcode -15" in line for line in tail) == 3, tail
    assert "... and 1 more" in tail
