"""Reading a trial's ``metrics.jsonl`` while the trial writes it.

Each line is one ``run.log`` call: ``{"seq": 0, "step": 0, "time": 1700000000.1, "metrics": {"loss": 0.5}}``.

Every process of the trial appends to the one file (a shell script that runs two Python stages,
a training script's worker processes), each numbering its lines from its own start. The store
keeps one point per (trial, seq, name), so the reader numbers the points itself: a line's seq is
its place in the file. Points stay unique whichever process wrote them, a later line wins over an
earlier one at the same step, and reading the file again gives every line the seq it had. A
record its writer may write twice (a run's summary, sent again when a stop interrupts the first
send) carries a ``once`` key, and is read once.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeper.trials import MetricPoint

log = logging.getLogger(__name__)


def points_from_record(record: Mapping[str, Any]) -> list[MetricPoint]:
    """One point per metric of a log record; values that are not numbers are left out."""
    seq = int(record["seq"])
    step = int(record["step"])
    when = float(record["time"])
    points = []
    for name, value in dict(record.get("metrics") or {}).items():
        if isinstance(value, numbers.Real):
            points.append(MetricPoint(name=str(name), value=float(value), step=step, seq=seq, time=when))
    return points


class MetricTailer:
    """Returns the complete lines added to a file since the last read; a trailing partial line waits."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._lines = 0  # complete lines before _offset: the next line's seq
        self._bad_lines = 0
        self._once: set[str] = set()  # the ``once`` keys read

    def read_records(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self._offset:  # the file was replaced: start over (seqs make resends harmless)
                    self._offset = self._lines = 0
                    self._once.clear()
                fh.seek(self._offset)
                data = fh.read(size - self._offset)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        records = []
        for raw in data[:end].split(b"\n"):
            seq = self._lines
            self._lines += 1
            if not raw.strip():
                continue
            try:
                record = {**json.loads(raw), "seq": seq}
                points_from_record(record)  # validates the shape
            except (ValueError, KeyError, TypeError):
                self._bad_lines += 1
                log.warning("skipping a malformed line in %s: %r", self.path, raw[:200])
                continue
            if "once" in record:
                if str(record["once"]) in self._once:
                    continue
                self._once.add(str(record["once"]))
            records.append(record)
        return records

    def read_points(self) -> list[MetricPoint]:
        return [p for record in self.read_records() for p in points_from_record(record)]

    @property
    def bad_lines(self) -> int:
        return self._bad_lines
