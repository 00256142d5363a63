"""The report torchrun (``python -m torch.distributed.run``) prints when one of its workers fails.

torchrun ends a failed run with its own text: log lines of its elastic agent, the Python traceback
of its launcher (``ChildFailedError``, the same every time) and a summary between rows of ``=``
naming the worker that failed first, with its exit code. That text alone is about 40 lines, a
trial's whole stored stderr tail, and its last line is a row of ``=``. What the worker said is
above it: an uncaught exception there is printed with the worker's rank before each line
(``[rank1]: ValueError: ...``). So a trial's tail leaves out the launcher's traceback and log lines,
and its reason is the failed worker's last words, or how it ended.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_CHILD_FAILED = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:"
TRACEBACK = "Traceback (most recent call last):"
_ROOT_CAUSE = "Root Cause (first observed failure):"
# torchrun's own lines above the report: its elastic agent's log ("E1129 04:26:31.226000 14909
# torch/distributed/elastic/..."), and the banner between rows of "*" saying it set OMP_NUM_THREADS.
_LAUNCHER_LINE = re.compile(
    r"[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/distributed/.*|\*{20,}|Setting OMP_NUM_THREADS environment .*"
)
_FIELD = re.compile(r"\s+(\w+)\s*:\s?(.*)")
_ENTRY = re.compile(r"\[\d+\]:")  # "[1]:", a failure of the summary
# "[default1]:", the role and local rank torchrun's --tee puts first (torch's own "[rank1]:" stays).
_TEE = re.compile(r"^\[(?!rank\d+\])[A-Za-z_][\w-]*?\d+\]:")
_RULE = re.compile(r"={10,}")  # the summary's first and last line
# After the summary, lines a process's shutdown prints (multiprocessing's resource_tracker warning)
# leave it the report; an exception there is a script that ran torchrun and went on.
_EXCEPTION = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?")


_FAILURES_SHOWN = 3  # other failed workers the kept summary names, one line each (8 GPUs: 7)


@dataclass(frozen=True)
class TorchrunReport:
    """A stderr that ends with torchrun's failure report, taken apart."""

    workers: list[str]  # the lines above the report (the workers' own), without torchrun's
    failed: str  # the launcher's exception line, which marks the report
    summary: list[str]  # the report's summary, its other failures one line each
    root_cause: dict[str, str] = field(default_factory=dict)  # rank, exitcode, traceback, ...

    @property
    def rank(self) -> str | None:
        """The global rank of the worker that failed first."""
        words = self.root_cause.get("rank", "").split()
        return words[0] if words and words[0].isdigit() else None

    @property
    def exit_code(self) -> int | None:
        words = self.root_cause.get("exitcode", "").split()
        try:
            return int(words[0]) if words else None
        except ValueError:
            return None

    def lines(self) -> list[str]:
        """The stderr without the launcher's traceback and log lines (its exception's line stays,
        so the report is still known as one)."""
        return [*self.workers, self.failed, *self.summary]

    def worker_words(self) -> list[str]:
        """The workers' lines as they printed them, without the ``[default1]:`` that torchrun's
        ``--tee`` puts first."""
        return [_TEE.sub("", line, count=1) for line in self.workers]

    def own_words(self) -> str | None:
        """The exception the first failed worker did not catch, as torch's hook printed it: each
        line after ``[rankN]: `` (torch's own log lines follow ``[rankN]:`` with no space)."""
        if self.rank is None:
            return None
        prefix = f"[rank{self.rank}]: "
        said = [line[len(prefix) :] for line in self.worker_words() if line.startswith(prefix)]
        # A deep traceback's header may be above the tail: its last line that is not a frame's.
        raised = last_exception(said) or next((line for line in reversed(said) if not _indented(line)), None)
        return prefix + raised if raised is not None else None


def torchrun_report(lines: Sequence[str]) -> TorchrunReport | None:
    """The report at the end of ``lines``, or None when they do not end with one."""
    failed_at = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(_CHILD_FAILED)), None)
    summary = [line for line in lines[failed_at + 1 :] if line.strip()] if failed_at is not None else []
    last_rule = max((i for i, line in enumerate(summary) if _RULE.fullmatch(line.strip())), default=None)
    if failed_at is None or last_rule is None:
        return None
    if any(line == TRACEBACK or _EXCEPTION.match(line) for line in summary[last_rule + 1 :]):
        return None  # a script that ran torchrun went on, and failed itself
    # The launcher's traceback: its header and the indented frames above the exception's line.
    start = failed_at
    while start > 0 and lines[start - 1][:1].isspace():
        start -= 1
    if start > 0 and lines[start - 1] == TRACEBACK:
        start -= 1
    workers = [line for line in lines[:start] if not _LAUNCHER_LINE.fullmatch(line.rstrip())]
    root_cause: dict[str, str] = {}
    if _ROOT_CAUSE in summary:
        for line in summary[summary.index(_ROOT_CAUSE) + 1 :]:
            found = _FIELD.fullmatch(line)
            if found:
                root_cause.setdefault(found[1], found[2].strip())
    return TorchrunReport(workers, lines[failed_at], _condensed(summary), root_cause)


def last_exception(lines: Sequence[str]) -> str | None:
    """The line that ends the last Python traceback in ``lines`` (the exception), if any."""
    begun = max((i for i, line in enumerate(lines) if line == TRACEBACK), default=None)
    if begun is None:
        return None
    return next((line for line in lines[begun + 1 :] if not _indented(line)), None)


def _indented(line: str) -> bool:
    """A traceback's frame line (or a blank one), not its exception's."""
    return line[:1] in ("", " ", "\t")


def _condensed(summary: list[str]) -> list[str]:
    """The summary with each of its other failures on one line, the first few of them: seven
    lines each for the seven other workers of an 8-GPU trial would fill a trial's tail alone."""
    out: list[str] = []
    others: list[tuple[str, dict[str, str]]] = []  # "[1]:", its fields
    in_failures = False
    for line in summary:
        if line == "Failures:":
            in_failures = True
        elif in_failures and (line.startswith("---") or _RULE.fullmatch(line.strip())):
            in_failures = False
            for head, fields in others[:_FAILURES_SHOWN]:
                out.append(f"{head} rank {fields.get('rank', '?')}, exitcode {fields.get('exitcode', '?')}")
            if len(others) > _FAILURES_SHOWN:
                out.append(f"... and {len(others) - _FAILURES_SHOWN} more")
        elif in_failures:
            if _ENTRY.fullmatch(line):
                others.append((line, {}))
            elif others and (found := _FIELD.fullmatch(line)):
                others[-1][1][found[1]] = found[2].strip()
            elif not others:
                out.append(line)  # "<NO_OTHER_FAILURES>"
            continue
        out.append(line)
    return out
