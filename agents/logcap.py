"""Keeping a trial's ``stdout.log`` and ``stderr.log`` under a size while the trial writes them.

A script that prints without end (a progress bar redrawn for days, a debug print in the inner loop)
would otherwise fill the disk under ``.sweeper/trials`` and fail every other trial on the machine.
The trial writes straight to its files (its output never passes through the agent), opened for
appending, so the agent can cut a file back while the trial runs and the trial's next write lands
at the new end. A file that passes its limit keeps its first half (how the trial started: the
config it printed, its first warnings), then one line saying how much was dropped, then its latest
output (a quarter of the limit, at most ``MAX_TAIL_BYTES``); it grows back and is cut again.

Whatever the trial writes in the moment between the agent's last read and its cut (microseconds)
is lost, and what it writes between the cut and the agent's append lands just before the marker:
the marker's count says "about".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 2**20  # per file
MIN_MAX_BYTES = 64 * 2**10  # below this the marker line alone would be a fair share of the file
MAX_TAIL_BYTES = 16 * 2**20  # what a cut holds in memory, however large the limit
_LINE_SEARCH = 64 * 2**10  # how far back from the half the head's last line end is looked for


class BoundedLogs:
    """The trial's log files, each cut back by :meth:`check` once it passes ``max_bytes`` (0: never)."""

    def __init__(self, paths: Iterable[Path], max_bytes: int) -> None:
        self._max = max(int(max_bytes), MIN_MAX_BYTES) if max_bytes > 0 else 0
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
        keep = min(max_bytes // 4, MAX_TAIL_BYTES)
        with open(path, "rb") as fh:
            if self.head < 0:
                self.head = _line_end_before(fh, max_bytes // 2)
            fh.seek(size - keep)
            tail = fh.read(keep)
            tail += fh.read()  # what the trial appended meanwhile
            size += len(tail) - keep
            tail = _from_whole_line(tail, keep)
            self.dropped += size - self.head - self.marker - len(tail)
            marker = (
                f"[sweeper: about {self.dropped} bytes of output dropped here to keep this file under "
                f"{max_bytes} bytes; the latest output follows]\n"
            ).encode()
            # What the trial appended while this was worked out, read just before the cut: under
            # load that took milliseconds, long enough to lose a trial's last line.
            tail += fh.read()
            os.truncate(path, self.head)
        # Appending, as the trial does: what it writes from here on lands after this, never under it.
        with open(path, "ab") as fh:
            fh.write(marker + tail)
        self.marker = len(marker)


def _from_whole_line(tail: bytes, keep: int) -> bytes:
    """The last ``keep`` bytes or so of ``tail``, starting with a whole line where one starts."""
    newline = tail.find(b"\n", max(len(tail) - keep, 0))
    return tail[newline + 1 :] if 0 <= newline < len(tail) - 1 else tail[-keep:]


def _line_end_before(fh, limit: int) -> int:
    """The offset just past the last newline before ``limit`` (``limit`` itself if none is near)."""
    start = max(limit - _LINE_SEARCH, 0)
    fh.seek(start)
    window = fh.read(limit - start)
    newline = window.rfind(b"\n")
    return start + newline + 1 if newline >= 0 else limit
