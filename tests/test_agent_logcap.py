"""A trial's stdout.log and stderr.log stay under their limit, keeping how the trial started, how
it ended and a line saying what was dropped in between."""

from __future__ import annotations

import builtins
import re
import subprocess
from pathlib import Path

import yaml
from cli_support import SCRIPTS, SWEEPER, run_and_list
from sweeper.agents import logcap
from sweeper.agents.logcap import BoundedLogs

MARKER = re.compile(
    rb"\[sweeper: about (\d+) bytes of output dropped here to keep this file under (\d+) bytes"
)


def _numbered(first: int, count: int) -> bytes:
    return b"".join(b"line %07d\n" % i for i in range(first, first + count))  # 13 bytes each


def test_a_file_written_past_its_limit_keeps_its_start_its_latest_lines_and_says_what_it_dropped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stdout.log"
    logs = BoundedLogs([path, tmp_path / "never-written.log"], max_bytes=130_000)
    written = 0
    with open(path, "ab") as trial:  # as the trial holds it: appending
        for _ in range(40):
            trial.write(_numbered(written, 5000))
            trial.flush()
            written += 5000
            logs.check()
            assert path.stat().st_size <= 130_000 + 5000 * 13  # at most one burst over
    text = path.read_bytes()
    head, rest = text.split(b"[sweeper: ", 1)
    marker, tail = rest.split(b"\n", 1)
    assert head == _numbered(0, 5000)  # the first half, whole lines
    last = int(tail.splitlines()[-1].split()[1])
    first_kept = int(tail.splitlines()[0].split()[1])
    assert last == written - 1 and tail == _numbered(first_kept, last - first_kept + 1)
    dropped = int(MARKER.search(b"[sweeper: " + marker).group(1))
    assert dropped == (first_kept - 5000) * 13  # exactly the lines that are gone


def test_what_the_trial_appends_while_a_cut_reads_its_file_is_kept(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(_numbered(0, 20_000))
    late = _numbered(20_000, 100)

    def open_while_the_trial_writes(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        if mode == "rb":  # the agent reading: the trial appends meanwhile, as a running one does
            with builtins.open(file, "ab") as trial:
                trial.write(late)
        return handle

    monkeypatch.setattr(logcap, "open", open_while_the_trial_writes, raising=False)
    BoundedLogs([path], max_bytes=130_000).check()
    assert path.read_bytes().endswith(late)  # read just before the cut, not lost to it


def test_what_the_trial_appends_while_a_cut_is_worked_out_is_kept(tmp_path: Path, monkeypatch) -> None:
    """On a busy machine the agent may lose the CPU between reading a file and cutting it."""
    path = tmp_path / "stdout.log"
    path.write_bytes(_numbered(0, 20_000))
    late = _numbered(20_000, 3)
    whole_line = logcap._from_whole_line

    def trial_writes_meanwhile(tail: bytes, keep: int) -> bytes:
        with builtins.open(path, "ab") as trial:
            trial.write(late)
        return whole_line(tail, keep)

    monkeypatch.setattr(logcap, "_from_whole_line", trial_writes_meanwhile)
    BoundedLogs([path], max_bytes=130_000).check()
    assert path.read_bytes().endswith(_numbered(19_999, 1) + late)


def test_no_limit_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(_numbered(0, 2000))
    BoundedLogs([path], max_bytes=0).check()
    assert path.read_bytes() == _numbered(0, 2000)


def test_a_trial_that_prints_without_end_keeps_logs_under_the_limit(tmp_path: Path) -> None:
    raw = {
        "method": "grid",
        "program": str(SCRIPTS / "chatty_trial.py"),
        "parameters": {"lines": {"value": 60_000}, "fail": {"values": [0, 1]}},
    }
    sweep_id, by_number = run_and_list(
        tmp_path, raw, "--max-log-mb", "0.5", "--max-failures", "0", timeout=240
    )
    trials = {t["config"]["fail"]: t for t in by_number.values()}
    assert trials[0]["state"] == "finished" and trials[1]["state"] == "failed"
    # 60,000 lines of 55 bytes on each stream: about 3.3 MB each, cut back to at most half a MiB.
    for trial in trials.values():
        folder = tmp_path / ".sweeper" / "trials" / sweep_id / str(trial["number"])
        for name, first in (("stdout.log", b"out line 000000000 "), ("stderr.log", b"err line 000000000 ")):
            text = (folder / name).read_bytes()
            assert len(text) <= 2**19, (name, len(text))
            assert text.startswith(first) and MARKER.search(text), name
        assert (folder / "stdout.log").read_bytes().endswith(b"out line 000060000 the end\n")
    # The error that ended the failed trial is its reason, however much came before it.
    assert "ValueError: the last words after all that output" in trials[1]["stderr_tail"]


def test_a_limit_too_small_to_hold_its_own_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"method": "grid", "program": "x.py", "parameters": {}})
    )
    ran = subprocess.run(
        [SWEEPER, "run", "sweep.yaml", "--max-log-mb", "0.01"], cwd=tmp_path, capture_output=True, text=True
    )
    assert ran.returncode == 2
    assert "expected 0 (no limit) or at least 0.0625 (64 KiB), got 0.01" in ran.stderr
    assert not (tmp_path / ".sweeper").exists()  # refused before anything was created


def test_the_commands_default_is_the_agents_default() -> None:
    from sweeper.cli.run import run

    (option,) = [p for p in run.params if p.name == "max_log_bytes"]
    assert option.default * 2**20 == logcap.DEFAULT_MAX_BYTES
