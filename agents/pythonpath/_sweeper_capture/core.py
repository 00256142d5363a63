"""Where captured numbers go: one record per logging call, in the agent's metrics.jsonl format.

In a trial process the agent started, a record is appended as one line to ``SWEEPER_METRICS_PATH``,
which the agent tails. For a trial that runs as a function in the agent's own process
(``sweeper.agent(function=...)``), records go straight to the trial's sink instead, and the threads
of sweeper's own trackers, which log to W&B and MLflow from that process too, are not followed.
"""

from __future__ import annotations

import json
import numbers
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

# Our seqs never meet those of sweeper.log (which count from 0) in the store's (trial, seq, name) key.
_SEQ_BASE = {"wandb": 1 << 40, "mlflow": 2 << 40}
_lock = threading.Lock()
_seq = {"wandb": 0, "mlflow": 0}
_fd: int | None = None
_process_token = ""


def _new_process_token() -> None:
    """A name of this process for ``once`` keys: its seqs are its own, and a pid may be another
    process's (a stage in a container of its own is PID 1 too)."""
    global _process_token
    _process_token = os.urandom(6).hex()


_new_process_token()
os.register_at_fork(after_in_child=_new_process_token)  # a forked child counts on from its parent's seqs


class InProcess:
    """A trial running as a function in this process: where its records go, what runs after each
    logging call (a stop raises there, as from ``run.log``), and the variables it set in the
    process's environment, which ``wandb.init()`` and ``mlflow.start_run()`` read."""

    def __init__(
        self,
        sink: Callable[[dict[str, Any]], None],
        after_log: Callable[[], None],
        environment: Mapping[str, str],
        mlflow_run_before: str | None = None,
    ) -> None:
        self.sink = sink
        self.after_log = after_log
        self.environment = dict(environment)
        self.mlflow_run_before = mlflow_run_before  # the MLflow run active before the trial, if any
        self.opened_wandb_runs: list[Any] = []  # to finish if the function leaves them open
        self.wandb_reset = True  # wandb will read the trial's variables (see wandb_runs)

    def check_environment(self, call: str) -> None:
        """Raise, from the script's ``call``, when the process's environment holds another trial's
        variables: several function trials at once in one process share one environment."""
        for name in ("WANDB_RUN_ID", "MLFLOW_RUN_ID"):
            mine = self.environment.get(name)
            if mine is not None and os.environ.get(name) != mine:
                raise RuntimeError(
                    f"sweeper: {call} in a function trial sees another trial's {name} "
                    f"({os.environ.get(name)!r}, not {mine!r}): function trials that log to W&B or "
                    "MLflow themselves run one at a time in a process; start one agent per process"
                )


#: Set once this process runs trials as functions: it is the agent's, not a trial's own.
agent_process = False
#: The W&B sweep and run of the trial this process belongs to, as the agent named them when the
#: process (or the one it was forked from) started; None outside a command trial.
_in_command_trial = bool(os.environ.get("SWEEPER_METRICS_PATH"))
TRIAL_WANDB_SWEEP = os.environ.get("WANDB_SWEEP_ID") if _in_command_trial else None
TRIAL_WANDB_RUN = os.environ.get("WANDB_RUN_ID") if _in_command_trial else None
_here = threading.local()  # .trial: the in-process trial this thread runs
_running: list[InProcess] = []
_not_followed = threading.local()


def start_in_process(trial: InProcess) -> None:
    global agent_process
    agent_process = True
    _here.trial = trial
    with _lock:
        _running.append(trial)


def end_in_process() -> None:
    trial = getattr(_here, "trial", None)
    _here.trial = None
    with _lock:
        if trial in _running:
            _running.remove(trial)


def alone(trial: InProcess) -> bool:
    """Whether ``trial`` is the only in-process trial running."""
    with _lock:
        return _running == [trial]


def trial_here() -> InProcess | None:
    """The in-process trial of the calling thread; from a thread it started (a data loader, a
    logger), the only one running, if just one is."""
    trial = getattr(_here, "trial", None)
    if trial is not None:
        return trial
    with _lock:
        return _running[0] if len(_running) == 1 else None


def current_trial() -> InProcess | None:
    """The in-process trial whose script makes the calling logging call, if any: none outside the
    agent's process, and none in a thread of sweeper's own trackers."""
    return trial_here() if agent_process and followed() else None


def not_followed_here() -> None:
    """What this thread logs is not the trial's: a tracker's worker in the agent's process."""
    _not_followed.yes = True


def followed() -> bool:
    return not getattr(_not_followed, "yes", False)


def raise_if_stopped() -> None:
    """A stop requested for an in-process trial raises here, from the script's logging call."""
    current = current_trial()
    if current is not None:
        current.after_log()


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            inner = item()
        except Exception:
            return None
        if isinstance(inner, numbers.Real) and not isinstance(inner, bool):
            return float(inner)
    return None


def flat(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if not hasattr(data, "items"):
        return out
    for key, value in data.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items") and not hasattr(value, "item"):
            out.update(flat(value, name + "."))
            continue
        found = number(value)
        if found is not None:
            out[name] = found
    return out


def next_seq(source: str) -> int:
    """A seq of its own for a record: the store keeps one point per (trial, seq, name)."""
    with _lock:
        seq = _SEQ_BASE[source] + _seq[source]
        _seq[source] += 1
    return seq


def emit(
    source: str, step: int, metrics: dict[str, float], seq: int | None = None, once: bool = False
) -> None:
    """Record one logging call's numbers (under ``seq``, given or new); never raises. A record
    the caller may send again (``once``) is marked so that the agent reads it once."""
    global _fd
    if not metrics or not followed():
        return
    current = current_trial()
    path = os.environ.get("SWEEPER_METRICS_PATH")
    if current is None and (agent_process or not path):
        return  # in the agent's process, only its trials' threads are followed
    try:
        if seq is None:
            seq = next_seq(source)
        with _lock:
            record = {
                "seq": seq,
                "step": int(step),
                "time": time.time(),
                "metrics": metrics,
                "source": source,
            }
            if once:
                record["once"] = f"{_process_token}-{seq}"
            if current is None and path:
                if _fd is None:
                    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(_fd, (json.dumps(record) + "\n").encode())  # one write: readers see whole lines
        if current is not None:
            current.sink(record)
    except Exception:
        pass


def mark(name: str, text: str) -> None:
    """A file in the trial's folder that tells the agent's trackers what the script does itself."""
    folder = os.environ.get("SWEEPER_TRIAL_DIR")
    if folder and followed():
        try:
            with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            pass
