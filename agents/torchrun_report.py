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
_TRACEBACK = "Traceback (most recent call last):"
_ROOT_CAUSE = "Root Cause (first observed failure):"
# torchrun's own lines above the report: its elastic agent's log ("E1129 04:26:31.226000 14909
# torch/distributed/elastic/..."), and the banner between rows of "*" saying it set OMP_NUM_THREADS.
_LAUNCHER_LINE = re.compile(
    r"[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/distributed/.*|\*{20,}|Setting OMP_NUM_THREADS environment .*"
)
_FIELD = re.compile(r"\s+(\w+)\s*:\s?(.*)")


@dataclass(frozen=True)
class TorchrunReport:
    """A stderr that ends with torchrun's failure report, taken apart."""

    workers: list[str]  # the lines above the report (the workers' own), without torchrun's
    failed: str  # the launcher's exception line, which marks the report
    summary: list[str]  # the report's summary, from its first row of "=" to the end
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

    def own_words(self) -> str | None:
        """The last line the first failed worker printed with its rank (its uncaught exception)."""
        if self.rank is None:
            return None
        prefix = f"[rank{self.rank}]:"
        return next((line for line in reversed(self.workers) if line.startswith(prefix)), None)


def torchrun_report(lines: Sequence[str]) -> TorchrunReport | None:
    """The report at the end of ``lines``, or None when they hold none."""
    failed_at = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(_CHILD_FAILED)), None)
    if failed_at is None:
        return None
    # The launcher's traceback: its header and the indented frames above the exception's line.
    start = failed_at
    while start > 0 and lines[start - 1][:1].isspace():
        start -= 1
    if start > 0 and lines[start - 1] == _TRACEBACK:
        start -= 1
    workers = [line for line in lines[:start] if not _LAUNCHER_LINE.fullmatch(line.rstrip())]
    summary = [line for line in lines[failed_at + 1 :] if line.strip()]
    root_cause: dict[str, str] = {}
    if _ROOT_CAUSE in summary:
        for line in summary[summary.index(_ROOT_CAUSE) + 1 :]:
            found = _FIELD.fullmatch(line)
            if found:
                root_cause.setdefault(found[1], found[2].strip())
    return TorchrunReport(workers, lines[failed_at], summary, root_cause)
