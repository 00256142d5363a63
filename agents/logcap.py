"""Keeping a trial's ``stdout.log`` and ``stderr.log`` under a size while the trial writes them.

A script that prints without end (a progress bar redrawn for days, a debug print in the inner loop)
would otherwise fill the disk under ``.sweeper/trials`` and fail every other trial on the machine.
The trial writes straight to its files (its output never passes through the agent), opened for
appending, so the agent can cut a file back while the trial runs and the trial's next write lands
at the new end. A file that passes its limit keeps its first half (how the trial started: the
config it printed, its first warnings), then one line saying how much was dropped, then the latest
quarter; it grows back towards the limit and is cut again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 2**20  # per file


class BoundedLogs:
    """The trial's log files, each cut back by :meth:`check` once it passes ``max_bytes`` (0: never)."""

    def __init__(self, paths: Iterable[Path], max_bytes: int) -> None:
        self._max = max(int(max_bytes), 0)
        self._files = {Path(p): _File() for p in paths}

    def check(self) -> None:
        """Cut back every file over the limit. A failure (a full disk) is logged once per file: the
        trial runs on, and the next check tries again."""
        if not self._max:
            return
        for path, state in self._files.items():
            try:
                state.bound(path, self._max)
            except OSError as exc:
                if not state.warned:
                    state.warned = True
                    log.warning("could not cut %s back to %d bytes: %s", path, self._max, exc)


class _File:
    def __init__(self) -> None:
        self.head = -1  # bytes of the kept start, once the file has been cut
        self.marker = 0  # bytes of the line that says what was dropped, after the head
        self.dropped = 0
        self.warned = False

    def bound(self, path: Path, max_bytes: int) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # the trial has not started
            return
        if size <= max_bytes:
            return
        with open(path, "rb") as fh:
            if self.head < 0:  # the first cut: the first half, up to its last whole line
                start = fh.read(max_bytes // 2)
                newline = start.rfind(b"\n")
                self.head = newline + 1 if newline >= 0 else len(start)
            fh.seek(size - max_bytes // 4)
            tail = fh.read(max_bytes // 4)
        newline = tail.find(b"\n")  # the kept end starts with a whole line
        if 0 <= newline < len(tail) - 1:
            tail = tail[newline + 1 :]
        self.dropped += size - self.head - self.marker - len(tail)
        marker = (
            f"[sweeper: {self.dropped} bytes of output dropped here to keep this file under "
            f"{max_bytes} bytes; the latest output follows]\n"
        ).encode()
        os.truncate(path, self.head)
        # Appending, as the trial does: what it writes from here on lands after this, never under it.
        with open(path, "ab") as fh:
            fh.write(marker + tail)
        self.marker = len(marker)
