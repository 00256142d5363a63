"""Trial processes left running by an agent that died, ended by the next agent started there.

Each trial runs in a process group of its own, so it outlives an agent killed with SIGKILL (by
hand, by the kernel's out-of-memory killer) and goes on holding its GPU, unwatched, while its
lease runs out and its configuration runs again elsewhere. The agent writes down each trial
while it runs (``process.json``: the trial's process mark and the agent's process id); an agent
that starts in the same folder ends the trials whose agent on this machine is gone: every
process that carries the trial's mark in its environment, in the trial's group or not (torchrun
workers have sessions of their own), so a recycled process id never names someone else's.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

from sweeper.agents.process import marked_processes, pid_exists, seen_from_here, signal_pids, this_agent
from sweeper.agents.trialdir import trials_root

from sweeper.files import write_atomic

log = logging.getLogger(__name__)

RECORD_NAME = "process.json"
_POLL_S = 0.05


def record_process(trial_dir: Path, mark: str) -> None:
    """Note that the processes carrying ``mark`` (:data:`~sweeper.agents.process.MARK_VARIABLE`)
    run the trial in ``trial_dir`` under this agent."""
    record = {"mark": mark, **this_agent()}
    try:
        write_atomic(trial_dir / RECORD_NAME, json.dumps(record) + "\n")
    except OSError as exc:  # a full disk must not stop the trial; only this safety net is lost
        log.warning("trial folder %s: cannot note the trial's processes (%s)", trial_dir, exc)


def forget_process(trial_dir: Path) -> None:
    (trial_dir / RECORD_NAME).unlink(missing_ok=True)


def end_orphans(workdir: Path, grace: float) -> list[str]:
    """End the trial processes under ``workdir`` whose agent on this machine is gone (SIGTERM,
    SIGKILL after ``grace`` seconds, all trials together); one line for each trial ended."""
    orphaned: dict[str, Path] = {}  # mark: trial folder
    for path in sorted(trials_root(workdir).glob(f"*/*/{RECORD_NAME}")):
        try:
            record = json.loads(path.read_text())
            mark, agent_pid = str(record["mark"]), int(record["agent_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if seen_from_here(record) and not pid_exists(agent_pid):  # else: another machine's, or watched
            orphaned[mark] = path.parent
    if not orphaned:
        return []
    running = marked_processes(*orphaned)
    _end([pid for pids in running.values() for pid in pids], grace)
    ended = [
        f"ended trial {f.parent.name}/{f.name}'s processes: their agent died"
        for m, f in orphaned.items()
        if m in running
    ]
    for folder in orphaned.values():
        forget_process(folder)
    for line in ended:
        log.warning("%s", line)
    return ended


def _end(pids: list[int], grace: float) -> None:
    signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_exists(pid) for pid in pids):
        time.sleep(_POLL_S)
    signal_pids(pids, signal.SIGKILL)
