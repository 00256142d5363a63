"""Reading a trial's stderr: its tail, kept with the trial, and the line of it that says why the
trial ended (shown in progress lines, ``sweeper trials`` and an agent's give-up line)."""

from __future__ import annotations

import os
from typing import BinaryIO

from sweeper.agents.process import describe_exit
from sweeper.agents.torchrun_report import TorchrunReport, last_exception, torchrun_report


def stderr_tail(path: str | os.PathLike[str], max_lines: int = 40, max_bytes: int = 8192) -> str:
    """The last lines of a log file (at most ``max_lines`` lines and about ``max_bytes`` bytes).
    A last line longer than that (an exception whose message holds a whole tensor) keeps its
    start, where the exception's name is, and its end."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
            if start > 0:
                # Drop the first, probably partial, line, unless it is all there is.
                newline = data.find(b"\n")
                rest = data[newline + 1 :] if newline >= 0 else b""
                # All that follows it may be trackers' own lines (W&B's footer after an exception).
                told = telling_line(rest.decode("utf-8", errors="replace"))
                data = rest if told is not None else _long_line(fh, start, data, max_bytes)
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    report = torchrun_report(lines)
    if report is not None:  # the launcher's own lines would fill the tail
        lines = report.lines()
    return "\n".join(lines[-max_lines:]) if max_lines > 0 else ""


# Lines trackers print for themselves as a script ends (W&B's "wandb: View run ... at:", its log
# folder, its history; MLflow's run and experiment links): never why a trial failed. W&B's own
# errors ("wandb: ERROR ...") may be.
_TRACKER_LINES = ("wandb:", "\U0001f3c3 View run ", "\U0001f9ea View experiment ")
_TRACKER_ERRORS = ("wandb: ERROR",)


def telling_line(tail: str | None) -> str | None:
    """The line of a stderr tail that says why the trial ended: its last, leaving out the lines
    trackers print for themselves; None when nothing else is there (``sys.exit(3)``). Under
    torchrun, the last words of the worker that failed first, or how it ended."""
    lines = (tail or "").splitlines()
    report = torchrun_report(lines)
    if report is not None:
        return _worker_failure(report)
    return _last_told(lines)


def _last_told(lines: list[str]) -> str | None:
    told = [line for line in lines if line.strip()]
    told = [
        line
        for line in told
        if not line.lstrip().startswith(_TRACKER_LINES) or line.lstrip().startswith(_TRACKER_ERRORS)
    ]
    return told[-1] if told else None


def _worker_failure(report: TorchrunReport) -> str | None:
    """The failed worker's uncaught exception; else how it ended (a signal: an abort in native
    code, the kernel's OOM killer; an exit code), after the exception a worker raised before its
    process group was made (then torch does not mark its lines with its rank)."""
    own = report.own_words()
    if own is not None:
        return own
    code, rank = report.exit_code, report.rank
    words = report.worker_words()
    raised = last_exception(words)
    if code is None or rank is None:  # a summary cut off, or of another form
        return raised or _last_told(words) or _last_told(report.summary)
    ended = f"worker rank {rank} {'was ' if code < 0 else 'ended with '}{describe_exit(code)}"
    return f"{raised} ({ended})" if raised and code > 0 else ended


_LINE_SEARCH = 1 << 20  # how far back a long last line's start is looked for


def _long_line(fh: BinaryIO, start: int, end: bytes, max_bytes: int) -> bytes:
    """The file's last line, which begins before ``start`` (``end`` is the rest of it): its first
    quarter of ``max_bytes`` and its last three quarters, with what is cut between them said."""
    back = max(0, start - _LINE_SEARCH)
    fh.seek(back)
    before = fh.read(start - back)
    newline = before.rfind(b"\n")
    head = before[newline + 1 :] if newline >= 0 else before
    line = head + end
    keep = max_bytes // 4
    if len(line) <= max_bytes:
        return line
    cut = len(line) - keep - (max_bytes - keep)
    far = "" if newline >= 0 or back == 0 else "at least "
    return line[:keep] + f" [... {far}{cut} bytes cut ...] ".encode() + line[-(max_bytes - keep) :]
