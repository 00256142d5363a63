"""A trial's undelivered reports, kept on disk until the coordinator has them.

Metric points are appended to ``spool.jsonl`` in the trial folder *before* they are sent, and
the number of points the coordinator acknowledged is kept in ``spool.acked``; the end state
goes to ``finish.json`` before it is sent and is removed once delivered. A coordinator outage
delays reports and an agent crash leaves them on disk; neither loses them, and resending is
harmless because the store counts a point once per ``(trial, seq, name)``.

The first line of the spool names the trial and its lease, so an agent started later in the
same folder can deliver what an earlier one left (:func:`leftover_spools`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sweeper.agents.batches import MemoryQueue
from sweeper.agents.process import pid_exists, seen_from_here, this_agent
from sweeper.agents.trialdir import sweep_folder_name, trials_root

from sweeper.files import write_atomic
from sweeper.protocol import Assignment, TrialOutcome
from sweeper.trials import MetricPoint, TrialState

log = logging.getLogger(__name__)

SPOOL_NAME = "spool.jsonl"
ACKED_NAME = "spool.acked"
FINISH_NAME = "finish.json"
ABANDONED_NAME = "spool.abandoned"
# A spool another machine's agent wrote to this recently is taken for that agent's, in use.
FOREIGN_QUIET_SECONDS = 60.0


class Spool:
    """Append-only record of one trial's points plus the count acknowledged so far. Thread safe.

    Memory holds only the points not yet acknowledged: a long trial logging every step would
    otherwise keep all of them in the agent for as long as it runs. After a write fails (a full
    disk), memory is all there is: the file stops where it was."""

    def __init__(
        self,
        folder: Path,
        trial_id: int,
        lease_id: str,
        sweep_id: str = "",
        owner: tuple[str, int] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.trial_id = trial_id
        self.lease_id = lease_id
        self.sweep_id = sweep_id
        self.owner = owner  # the agent that runs the trial (see this_agent)
        self._lock = threading.Lock()
        self._unacked = MemoryQueue()
        self._acked = 0  # acknowledged so far, in all
        self._on_disk = True  # False once a write failed (a full disk): from then on, memory only

    # -- creating and reopening ------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, assignment: Assignment) -> Spool:
        """A fresh spool for a new lease; whatever an earlier attempt left in the folder is dropped."""
        owner = this_agent()
        spool = cls(folder, assignment.trial_id, assignment.lease_id, assignment.sweep_id, owner)
        header = {
            "trial_id": assignment.trial_id,
            "lease_id": assignment.lease_id,
            "sweep_id": assignment.sweep_id,
            **owner,
        }
        write_atomic(spool.path, json.dumps(header) + "\n")
        write_atomic(spool.acked_path, "0\n")
        for stale in (spool.finish_path, spool.folder / ABANDONED_NAME):
            stale.unlink(missing_ok=True)
        return spool

    @classmethod
    def open(cls, folder: Path) -> Spool:
        """Reload a spool an agent left behind; raises OSError or ValueError when it is unreadable."""
        folder = Path(folder)
        lines = (folder / SPOOL_NAME).read_bytes().split(b"\n")
        header = json.loads(lines[0])
        owner = {k: header.get(k) for k in ("host", "agent_pid", "pid_ns")} if "agent_pid" in header else None
        spool = cls(
            folder, int(header["trial_id"]), str(header["lease_id"]), str(header.get("sweep_id", "")), owner
        )
        points = []
        for raw in lines[1:]:
            try:
                p = json.loads(raw)
                points.append(MetricPoint(p["name"], float(p["value"]), p["step"], p["seq"], p["time"]))
            except (ValueError, KeyError, TypeError):
                continue  # an empty last line, or one cut short by a crash: its point was never sent
        try:
            acked = min(int(spool.acked_path.read_text().strip() or 0), len(points))
        except (OSError, ValueError):
            acked = 0  # resending is harmless; losing is not
        spool._acked = acked
        spool._unacked.append(points[acked:])
        return spool

    # -- points ----------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.folder / SPOOL_NAME

    @property
    def acked_path(self) -> Path:
        return self.folder / ACKED_NAME

    @property
    def finish_path(self) -> Path:
        return self.folder / FINISH_NAME

    def append(self, points: Iterable[MetricPoint]) -> None:
        """Write the points to disk (flushed to the OS, so they outlive this process), then queue them."""
        points = list(points)
        if not points:
            return
        text = "".join(json.dumps(asdict(p), allow_nan=True) + "\n" for p in points)
        with self._lock:
            if self._on_disk:
                try:
                    with open(self.path, "a", encoding="utf-8") as fh:
                        fh.write(text)
                except OSError as exc:  # no more writes after a failed one: it may have left half a line
                    self._memory_only(exc)
            self._unacked.append(points)

    def unacked(self, limit: int | None = None) -> list[MetricPoint]:
        return self._unacked.unacked(limit)

    @property
    def pending(self) -> int:
        return self._unacked.pending

    def ack(self, count: int) -> None:
        """The coordinator has the next ``count`` points."""
        with self._lock:
            count = max(0, min(count, self._unacked.pending))
            self._unacked.ack(count)
            self._acked += count
            if not self._on_disk:
                return
            try:
                write_atomic(self.acked_path, f"{self._acked}\n")
            except OSError as exc:  # the points did arrive: that is not the coordinator's failure
                self._memory_only(exc)

    def _memory_only(self, exc: OSError) -> None:
        """A write failed (a full disk): the points still go to the coordinator, from memory, and
        the trial goes on; the file is no longer kept up to date."""
        self._on_disk = False
        log.warning(
            "trial spool %s: cannot write (%s); this trial's points are kept in memory only from now "
            "on, so a crash of this agent would lose those not yet sent",
            self.folder,
            exc,
        )

    # -- the end state ---------------------------------------------------------------------

    def keep_outcome(self, outcome: TrialOutcome) -> None:
        write_atomic(self.finish_path, json.dumps(_outcome_to_json(outcome)) + "\n")

    def kept_outcome(self) -> TrialOutcome | None:
        try:
            data = json.loads(self.finish_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return TrialOutcome(
            state=TrialState(data["state"]),
            exit_code=data.get("exit_code"),
            stderr_tail=data.get("stderr_tail"),
            stop_reason=data.get("stop_reason"),
        )

    def delivered(self) -> None:
        """Everything reached the coordinator: nothing is left to resend."""
        self.finish_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self.acked_path.unlink(missing_ok=True)

    def abandon(self, reason: str) -> None:
        """The coordinator will never take these reports (the lease is gone): keep them, stop resending."""
        write_atomic(self.folder / ABANDONED_NAME, reason + "\n")

    @property
    def is_abandoned(self) -> bool:
        return (self.folder / ABANDONED_NAME).exists()

    @property
    def in_use(self) -> bool:
        """Its agent, another process, is running: the trial is no leftover, but that agent's
        (agents of a Slurm array share the folder they were submitted from). On this machine,
        its process is asked; another machine's agent is taken for running while it wrote here
        in the last minute (its end, just before it sends it)."""
        if self.owner is None:
            return False
        if seen_from_here(self.owner):
            pid = int(self.owner["agent_pid"])
            if self.owner.get("pid_ns") is None:  # written before namespaces were: pid 1 may be
                return pid != os.getpid() and pid_exists(pid)  # a container's earlier life
            return pid_exists(pid)  # this agent's own trials' too
        return time.time() - self._last_written() < FOREIGN_QUIET_SECONDS

    def _last_written(self) -> float:
        written = [0.0]
        for path in (self.path, self.acked_path, self.finish_path):
            with contextlib.suppress(OSError):
                written.append(path.stat().st_mtime)
        return max(written)


def leftover_spools(workdir: Path, sweep_id: str | None = None) -> Iterator[Spool]:
    """Spools that an earlier agent in ``workdir`` did not finish delivering."""
    root = trials_root(workdir)
    # Only that sweep's folder, when one is named: every start of an agent reads these in full.
    sweeps = glob.escape(sweep_folder_name(sweep_id)) if sweep_id is not None else "*"
    for path in sorted(root.glob(f"{sweeps}/*/{SPOOL_NAME}")):
        folder = path.parent
        if (folder / ABANDONED_NAME).exists():
            continue
        try:
            spool = Spool.open(folder)
        except FileNotFoundError:  # its agent delivered it meanwhile
            continue
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot read the spool in %s (%s); leaving it there", folder, exc)
            continue
        if (sweep_id is None or spool.sweep_id == sweep_id) and not spool.in_use:
            yield spool


def _outcome_to_json(outcome: TrialOutcome) -> dict[str, Any]:
    return {
        "state": TrialState(outcome.state).value,
        "exit_code": outcome.exit_code,
        "stderr_tail": outcome.stderr_tail,
        "stop_reason": outcome.stop_reason,
    }
