"""Trial processes left running by an agent that died, ended by the next agent started there.

Each trial runs in a process group of its own, so it outlives an agent killed with SIGKILL (by
hand, by the kernel's out-of-memory killer) and goes on holding its GPU, unwatched, while its
lease runs out and its configuration runs again elsewhere. The agent writes down each trial
while it runs (``process.json``: the process group and the agent's process id); an agent that
starts in the same folder ends the trials whose agent on this machine is gone: every process
that carries the trial's folder in its environment, in the trial's group or not (torchrun
workers have sessions of their own), so a recycled process id never names someone else's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

from sweeper.agents.process import processes_with

from sweeper.files import write_atomic

log = logging.getLogger(__name__)

RECORD_NAME = "process.json"
_POLL_S = 0.05


def record_process(trial_dir: Path, pgid: int) -> None:
    """Note that the trial in ``trial_dir`` runs as process group ``pgid`` under this agent."""
    record = {"pgid": pgid, "agent_pid": os.getpid(), "host": socket.gethostname()}
    try:
        write_atomic(trial_dir / RECORD_NAME, json.dumps(record) + "\n")
    except OSError as exc:  # a full disk must not stop the trial; only this safety net is lost
        log.warning("trial folder %s: cannot note the trial's process group (%s)", trial_dir, exc)


def forget_process(trial_dir: Path) -> None:
    (trial_dir / RECORD_NAME).unlink(missing_ok=True)


def end_orphans(workdir: Path, grace: float) -> list[str]:
    """End the trial processes under ``workdir`` whose agent on this machine is gone (SIGTERM,
    SIGKILL after ``grace`` seconds); one line for each trial ended."""
    ended = []
    host = socket.gethostname()
    for path in sorted((Path(workdir) / ".sweeper" / "trials").glob(f"*/*/{RECORD_NAME}")):
        try:
            record = json.loads(path.read_text())
            pgid, agent_pid = int(record["pgid"]), int(record["agent_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("host") != host or _exists(agent_pid):
            continue  # another machine's trial, or its agent still watches it
        # Every process started for the trial carries its folder in its environment, in its
        # group or not (torchrun workers have sessions of their own).
        left = processes_with("SWEEPER_TRIAL_DIR", os.fspath(path.parent))
        if left:
            _end(left, grace)
            trial = f"{path.parent.parent.name}/{path.parent.name}"
            ended.append(f"ended trial {trial}'s processes (group {pgid}): their agent died")
        forget_process(path.parent)
    for line in ended:
        log.warning("%s", line)
    return ended


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to judge
        return True
    return True


def _end(pids: list[int], grace: float) -> None:
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_exists(pid) for pid in pids):
        time.sleep(_POLL_S)
    _signal(pids, signal.SIGKILL)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # gone (or never ours to signal)
