"""The in-script API: ``sweeper.init()``, ``run.log()``, ``run.config``.

One script works three ways:

- as a trial subprocess started by an agent (``SWEEPER_CONFIG_PATH`` is set): the trial's values
  override the defaults and each ``log`` call appends one JSON line to ``SWEEPER_METRICS_PATH``;
- as a function called in-process by an agent: the same, fed straight to the agent;
- on its own: the defaults, with the history kept in memory (``run.history``).

Standard library only, so importing it inside a training script costs nothing.
"""

from __future__ import annotations

import atexit
import json
import logging
import numbers
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sweeper import _context
from sweeper._context import TrialContext, run_id_for
from sweeper.checkpoints import SNAPSHOTS_FOLDER, signature, take_snapshot
from sweeper.config import Config, deep_merge

__all__ = ["Config", "Run", "TrialStopped", "finish", "init", "log", "log_artifact"]

log_ = logging.getLogger(__name__)


class TrialStopped(BaseException):
    """Raised by ``run.log`` in function mode once the coordinator has asked the trial to stop.

    Not an ``Exception``, as SIGTERM ends a command trial whatever it catches: a function that
    guards its logging with ``except Exception`` still stops (``wandb.agent`` ends its function's
    process too)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "trial stopped")
        self.reason = reason


def raise_if_stopped(context: TrialContext) -> None:
    """:class:`TrialStopped` once a stop was requested for the trial: from the script's logging calls."""
    if context.stop_requested:
        raise TrialStopped(context.stop_reason)


class Run:
    """One trial (or one standalone run) as the script sees it. Create with :func:`init`."""

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        id: str,
        sweep_id: str | None = None,
        trial_number: int | None = None,
        dir: Path | None = None,
        metrics_path: Path | None = None,
        context: TrialContext | None = None,
    ) -> None:
        self.config = Config(config)
        self.id = id
        self.sweep_id = sweep_id
        self.trial_number = trial_number
        self.dir = dir if dir is not None else Path.cwd()
        self.summary = Summary()
        self.history: list[dict[str, Any]] = []
        self._context = context
        self._metrics_path = metrics_path
        self._fd: int | None = None
        # A second init() in the same trial continues the numbering: the store drops repeated seqs.
        self._seq = _next_seq.get(id, 0)
        self._step = 0
        self._last_step = 0  # where the summary's own values land when the run finishes
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._finished = False
        self.artifacts: list[Path] = []  # files marked with log_artifact
        self._snapshot_of: tuple = ()  # the checkpoint folder's signature when last snapshotted

    @property
    def step(self) -> int:
        """The step the next ``log`` call without ``step=`` lands on."""
        return self._step

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def checkpoint_dir(self) -> Path:
        """A folder (created on first use) for this trial's checkpoint.

        In a ``method: pbt`` sweep each ``log`` call that follows a save copies the folder, and the
        agent publishes the newest copy, so another member can restart from it: save, then log. A
        file being written is never published. Outside a sweep it is ``$SWEEPER_CHECKPOINT_DIR``,
        else ``./checkpoint``.
        """
        if self.in_sweep:
            path = Path(self.dir) / "checkpoint"
        else:
            path = Path(os.environ.get("SWEEPER_CHECKPOINT_DIR") or Path.cwd() / "checkpoint")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def restore_from(self) -> Path | None:
        """A folder holding the checkpoint this trial starts from, or None to start afresh.

        In a ``method: pbt`` sweep, a member restarted from a better member holds a copy of that
        member's ``checkpoint_dir`` here. Outside a sweep it is ``$SWEEPER_RESTORE_FROM`` when set.
        """
        if self.in_sweep:
            path = Path(self.dir) / "restore"
            return path if path.is_dir() else None
        found = os.environ.get("SWEEPER_RESTORE_FROM")
        return Path(found) if found and Path(found).is_dir() else None

    @property
    def in_sweep(self) -> bool:
        return self.sweep_id is not None

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        """Record metric values at a step, as ``wandb.log`` does.

        Without ``step`` the values land on the current step, which then moves on by one.
        With ``step`` the current step becomes that step (a smaller one than the current step
        is ignored with a warning, as W&B does), and stays there for further calls.
        """
        if self._context is not None:
            raise_if_stopped(self._context)
        if self._finished:
            raise RuntimeError("this run has finished; call sweeper.init() for a new one")
        with self._lock:
            if step is not None:
                step = int(step)
                if step < self._step:
                    log_.warning(
                        "log(step=%d) is below the current step %d; these values are ignored",
                        step,
                        self._step,
                    )
                    return
                self._step = step
                at = step
            else:
                at = self._step
                self._step += 1
            metrics = self._numbers(data)
            if not metrics:
                return
            if self.in_sweep:
                self._snapshot_checkpoint()
            record = {"seq": self._seq, "step": at, "time": time.time(), "metrics": metrics}
            self._seq += 1
            _next_seq[self.id] = self._seq
            self._last_step = at
            self.summary.record_logged(metrics, at)
            self._emit(record)

    def _snapshot_checkpoint(self) -> None:
        # Before the record is written: when the agent sees the value, the copy it goes with exists.
        # The agent makes the snapshots folder for trials it publishes (method pbt); elsewhere this
        # costs one stat.
        snapshots = Path(self.dir) / SNAPSHOTS_FOLDER
        if not snapshots.is_dir():
            return
        folder = Path(self.dir) / "checkpoint"
        now = signature(folder)
        if not now or now == self._snapshot_of:
            return
        try:
            take_snapshot(folder, snapshots)
        except OSError as exc:
            log_.warning("sweeper.log: cannot copy the checkpoint in %s (%s); not published", folder, exc)
            return
        self._snapshot_of = now

    def _numbers(self, data: Mapping[str, Any]) -> dict[str, float | int | bool]:
        out: dict[str, float | int | bool] = {}
        for key, value in data.items():
            number = _as_number(value)
            if number is None:
                if key not in self._warned:
                    self._warned.add(key)
                    log_.warning("sweeper.log: %r is not a number (%s); skipped", key, type(value).__name__)
                continue
            out[str(key)] = number
        return out

    def _emit(self, record: dict[str, Any]) -> None:
        if self._context is not None:
            self._context.sink(record)
        elif self._metrics_path is not None:
            if self._fd is None:
                self._fd = os.open(self._metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            line = (json.dumps(record) + "\n").encode()
            # One write on an O_APPEND fd: a reader sees whole lines, never two interleaved.
            written = os.write(self._fd, line)
            while written < len(line):  # only for very large lines
                written += os.write(self._fd, line[written:])
        else:
            self.history.append(record)

    def log_artifact(self, path: str | os.PathLike[str]) -> Path:
        """Mark a file (or folder) for the sweep's trackers: they attach it to this trial's run.

        In a trial, one line ``{"path": ..., "time": ...}`` is appended to ``artifacts.jsonl`` in the
        trial folder, which the agent reads when the trial ends; the file must still be there then.
        """
        full = Path(path).resolve()
        if not full.exists():
            raise FileNotFoundError(f"log_artifact: {full} does not exist")
        with self._lock:
            self.artifacts.append(full)
            if self.in_sweep and self.dir is not None:
                line = json.dumps({"path": os.fspath(full), "time": time.time()}) + "\n"
                with open(Path(self.dir) / "artifacts.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(line)
        return full

    def finish(self) -> None:
        """End the run: later ``log`` calls fail. Called at interpreter exit if not before."""
        with self._lock:
            if self._finished:
                return
            if written := self.summary.written():  # the trial's last word, as W&B's sweeps read it
                step = self.summary.last_step_of(written, default=self._last_step)
                self._emit({"seq": self._seq, "step": step, "time": time.time(), "metrics": written})
                self._seq += 1
                _next_seq[self.id] = self._seq
            self._finished = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        global _current_run
        if _current_run is self:
            _current_run = None
        if self._context is not None and self._context.run is self:
            self._context.run = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def __repr__(self) -> str:
        where = f"sweep {self.sweep_id} trial {self.trial_number}" if self.in_sweep else "standalone"
        return f"<Run {self.id} ({where})>"


class Summary(dict):
    """``run.summary``, as in W&B: the last logged value of each metric, and what the script writes
    itself. W&B's sweeps read a run's objective from its summary, so a number written here (the best
    epoch's accuracy, say) is the trial's value once the run finishes."""

    def __init__(self) -> None:
        super().__init__()
        self._logged: dict[str, Any] = {}
        self._logged_at: dict[str, int] = {}  # the step each metric was last logged at

    def record_logged(self, metrics: Mapping[str, Any], step: int) -> None:
        self.update(metrics)
        self._logged.update(metrics)
        self._logged_at.update(dict.fromkeys(metrics, step))

    def last_step_of(self, names: Iterable[str], default: int) -> int:
        """Where values for ``names`` land: on the last step any of them was logged at, so a value
        that replaces a logged one adds no step to that metric's curve (nor an iteration)."""
        steps = [self._logged_at[name] for name in names if name in self._logged_at]
        return max(steps, default=default)

    def written(self) -> dict[str, float | int | bool]:
        """The numbers the script wrote here itself, where they differ from what it last logged."""
        out = {}
        for key, value in self.items():
            number = _as_number(value)
            logged = self._logged.get(key)
            # NaN never equals itself: a logged NaN left as it was is no new value either.
            same = key in self._logged and (logged == number or (logged != logged and number != number))
            if number is not None and not same:
                out[str(key)] = number
        return out


def _as_number(value: Any) -> float | int | bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # numpy and torch scalars, without importing either
    if callable(item):
        try:
            inner = item()
        except Exception:  # a many-element array, or an object whose item() means something else
            return None
        if isinstance(inner, numbers.Real):
            return _as_number(inner)
    return None


_current_run: Run | None = None
_next_seq: dict[str, int] = {}  # run id -> the seq its next logged line gets, across init() calls
_atexit_registered = False


def init(config: Mapping[str, Any] | None = None, **kwargs: Any) -> Run:
    """Start a run and make it the current one. ``config`` holds the script's defaults.

    Other keyword arguments (``project``, ``name``, ``tags``, ``mode`` ...) are accepted so
    calls written for ``wandb.init`` work unchanged; they do not change what the run does.
    """
    global _current_run, _atexit_registered
    defaults = dict(config or {})
    ctx = _context.current()
    if ctx is not None:
        # Function mode: the run belongs to this trial's context, not to the process.
        if ctx.run is not None:
            ctx.run.finish()
        run = _run_from_context(ctx, defaults)
        ctx.run = run
        return run
    if _current_run is not None:
        _current_run.finish()
    run = _run_from_env(defaults) or _standalone(defaults)
    _current_run = run
    if not _atexit_registered:
        atexit.register(_finish_at_exit)
        _atexit_registered = True
    return run


def _run_from_context(ctx: TrialContext, defaults: dict[str, Any]) -> Run:
    return Run(
        config=deep_merge(defaults, ctx.config),
        id=run_id_for(ctx.sweep_id, ctx.trial_number),
        sweep_id=ctx.sweep_id,
        trial_number=ctx.trial_number,
        dir=ctx.trial_dir,
        context=ctx,
    )


def _run_from_env(defaults: dict[str, Any]) -> Run | None:
    config_path = os.environ.get("SWEEPER_CONFIG_PATH")
    if not config_path:
        return None
    try:
        with open(config_path, encoding="utf-8") as fh:
            values = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"sweeper.init: cannot read the trial's config at {config_path}: {exc}") from exc
    sweep_id = os.environ.get("SWEEPER_SWEEP_ID", "")
    number = int(os.environ.get("SWEEPER_TRIAL_NUMBER", "0"))
    trial_dir = os.environ.get("SWEEPER_TRIAL_DIR")
    metrics = os.environ.get("SWEEPER_METRICS_PATH")
    return Run(
        config=deep_merge(defaults, values),
        id=run_id_for(sweep_id, number),
        sweep_id=sweep_id,
        trial_number=number,
        dir=Path(trial_dir) if trial_dir else Path(config_path).parent,
        metrics_path=Path(metrics) if metrics else None,
    )


def _standalone(defaults: dict[str, Any]) -> Run:
    return Run(config=defaults, id=uuid.uuid4().hex[:8])


def current_run() -> Run | None:
    """The run ``sweeper.log`` writes to: this trial's in function mode, else the process's."""
    ctx = _context.current()
    if ctx is not None:
        return ctx.run
    return _current_run


def log(data: Mapping[str, Any], step: int | None = None) -> None:
    """``run.log`` on the current run."""
    run = current_run()
    if run is None:
        raise RuntimeError("sweeper.log() called before sweeper.init(): call run = sweeper.init() first")
    run.log(data, step=step)


def log_artifact(path: str | os.PathLike[str]) -> Path:
    """``run.log_artifact`` on the current run."""
    run = current_run()
    if run is None:
        raise RuntimeError("sweeper.log_artifact() called before sweeper.init()")
    return run.log_artifact(path)


def finish() -> None:
    """Finish the current run, if any."""
    run = current_run()
    if run is not None:
        run.finish()


def end_context_runs(ctx: TrialContext) -> None:
    """Finish the run made in ``ctx``, if the function left it open: the agent calls this after it."""
    if ctx.run is not None:
        ctx.run.finish()


def _finish_at_exit() -> None:
    if _current_run is not None:
        _current_run.finish()
