"""Metric capture for scripts that log to W&B or MLflow themselves.

When (and only when) the trial imports ``wandb`` or ``mlflow``, their logging calls are wrapped:
each call still does exactly what it did, and the numbers it logged are also appended, as one line,
to ``SWEEPER_METRICS_PATH`` in the agent's metrics.jsonl format, with a ``source`` naming the tracker.
The agent tails that file, so the coordinator sees the values while the trial runs.
Numbers a script writes to W&B's run summary itself reach it too, once, when the run ends: W&B's
sweeps read a run's objective from its summary.

Standard library only; every wrapper swallows its own errors so the script's logging is untouched.
"""

from __future__ import annotations

import atexit
import importlib.abc
import json
import numbers
import os
import sys
import threading
import time
from typing import Any

# Our seqs never meet those of sweeper.log (which count from 0) in the store's (trial, seq, name) key.
_SEQ_BASE = {"wandb": 1 << 40, "mlflow": 2 << 40}
_lock = threading.Lock()
_seq = {"wandb": 0, "mlflow": 0}
_fd: int | None = None
_installed = False


def _number(value: Any) -> float | None:
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


def _flat(data: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if not hasattr(data, "items"):
        return out
    for key, value in data.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items") and not hasattr(value, "item"):
            out.update(_flat(value, name + "."))
            continue
        number = _number(value)
        if number is not None:
            out[name] = number
    return out


def emit(source: str, step: int, metrics: dict[str, float]) -> None:
    """Append one record; never raises."""
    global _fd
    path = os.environ.get("SWEEPER_METRICS_PATH")
    if not path or not metrics:
        return
    try:
        with _lock:
            seq = _SEQ_BASE[source] + _seq[source]
            _seq[source] += 1
            record = {
                "seq": seq,
                "step": int(step),
                "time": time.time(),
                "metrics": metrics,
                "source": source,
            }
            if _fd is None:
                _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(_fd, (json.dumps(record) + "\n").encode())  # one write: readers see whole lines
    except Exception:
        pass


def _mark(name: str, text: str) -> None:
    folder = os.environ.get("SWEEPER_TRIAL_DIR")
    if folder:
        try:
            with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            pass


# -- wandb -----------------------------------------------------------------------------------------

# Set while wandb itself writes a run's summary (a resumed run's, or any ``wandb.log`` makes):
# only the script's own writes are its summary values.
_internal = threading.local()


class _Written:
    """The numbers a script wrote to one run's summary itself, and the last step its wandb.log used."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.step = 0
        self.sent = False


_unsent: list[_Written] = []


def _written(summary: Any, create: bool = True) -> _Written | None:
    """Kept on the run's Summary, read through ``vars``: its attribute lookup asks wandb's service."""
    state = vars(summary).get("_sweeper_written")
    if state is None and create:
        state = _Written()
        object.__setattr__(summary, "_sweeper_written", state)
        _unsent.append(state)
    return state


def _note(state: _Written, record: Any) -> None:
    """Follow one summary diff: a key set or removed replaces all it held (``a`` holds ``a.b``)."""
    for item in [*record.remove, *record.update]:
        name = ".".join(str(part) for part in item.key)
        for key in [k for k in state.values if k == name or k.startswith(name + ".")]:
            del state.values[key]
    for item in record.update:
        state.values.update(_flat({".".join(str(part) for part in item.key): item.value}))


def _send(state: _Written) -> None:
    """One record per run, at its last logged step: as the newest point, it is the trial's value.

    A stop's SIGTERM waits until the record is out, so it is written neither twice nor not at all.
    """
    import signal

    mask = None
    try:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    except Exception:
        pass
    try:
        with _lock:
            if state.sent:
                return
            state.sent = True
        if state in _unsent:
            _unsent.remove(state)
        emit("wandb", state.step, dict(state.values))
    except Exception:
        pass
    finally:
        if mask is not None:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            except Exception:
                pass


def _send_unsent() -> None:
    """At exit, for runs the script never finished (a stop's SIGTERM ends up here too)."""
    for state in list(_unsent):
        _send(state)


def _internally(method: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _internal.depth = getattr(_internal, "depth", 0) + 1
        try:
            return method(*args, **kwargs)
        finally:
            _internal.depth -= 1

    return wrapper


def _patch_wandb(module: Any) -> None:
    from wandb.sdk import wandb_run, wandb_summary  # already imported by ``import wandb``

    run_cls = wandb_run.Run
    original = _internally(run_cls._log)

    def _log(self: Any, data: Any, step: Any = None, commit: Any = None) -> Any:
        try:
            at = int(step) if step is not None else int(getattr(self, "_local_step", 0))
        except Exception:
            at = 0
        result = original(self, data, step, commit)
        try:
            logged = _flat(data)
            emit("wandb", at, logged)
            state = _written(self.summary)
            state.step = max(state.step, at)
            for name in [*logged, *data]:  # logged again, W&B's summary holds the logged value again
                state.values.pop(str(name), None)
        except Exception:
            pass
        return result

    run_cls._log = _log
    # Every summary write (item, attribute, update, nested, delete) reaches the root's _update as one
    # diff; wandb.log's own summary is made by wandb's service, and a resumed run's comes in here.
    run_cls._set_run_obj = _internally(run_cls._set_run_obj)
    summary_update = wandb_summary.Summary._update

    def _update(self: Any, record: Any) -> Any:
        result = summary_update(self, record)
        if not getattr(_internal, "depth", 0):
            try:
                _note(_written(self), record)
            except Exception:
                pass
        return result

    wandb_summary.Summary._update = _update
    finish = run_cls._finish  # what finish(), wandb.finish(), ``with`` and reinit all end in

    def _finish(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            state = _written(self.summary, create=False)
            if state is not None:
                _send(state)
        except Exception:
            pass
        return finish(self, *args, **kwargs)

    run_cls._finish = _finish
    atexit.register(_send_unsent)
    init = module.init

    def wandb_init(*args: Any, **kwargs: Any) -> Any:
        run = init(*args, **kwargs)
        # Tells the agent's W&B adapter that the script keeps its own run for this trial.
        _mark(
            "wandb-run.json", json.dumps({"id": getattr(run, "id", None), "dir": getattr(run, "dir", None)})
        )
        # After wandb's own exit hook, which init registers, so ours runs first (atexit is LIFO).
        atexit.unregister(_send_unsent)
        atexit.register(_send_unsent)
        _exit_cleanly_on_sigterm()
        return run

    module.init = wandb_init


def _exit_cleanly_on_sigterm() -> None:
    """A stop is SIGTERM: turn it into SystemExit so wandb's exit hook finishes (and flushes) the run.

    Only when the script left SIGTERM at its default, which would end the process on the spot.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# -- mlflow ----------------------------------------------------------------------------------------


def _patch_mlflow(module: Any) -> None:
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    log_metric = TrackingServiceClient.log_metric
    log_batch = TrackingServiceClient.log_batch

    def patched_metric(self: Any, run_id: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        result = log_metric(self, run_id, key, value, *args, **kwargs)
        step = kwargs.get("step", args[1] if len(args) > 1 else None)
        number = _number(value)
        if number is not None:
            emit("mlflow", int(step or 0), {str(key): number})
        return result

    def patched_batch(self: Any, run_id: Any, metrics: Any = (), *args: Any, **kwargs: Any) -> Any:
        result = log_batch(self, run_id, metrics, *args, **kwargs)
        by_step: dict[int, dict[str, float]] = {}
        for metric in metrics or ():
            number = _number(getattr(metric, "value", None))
            if number is not None:
                by_step.setdefault(int(getattr(metric, "step", 0) or 0), {})[str(metric.key)] = number
        for step, values in sorted(by_step.items()):
            emit("mlflow", step, values)
        return result

    TrackingServiceClient.log_metric = patched_metric
    TrackingServiceClient.log_batch = patched_batch
    _mark("mlflow-run.json", json.dumps({"run_id": os.environ.get("MLFLOW_RUN_ID")}))


_PATCHES = {"wandb": _patch_wandb, "mlflow": _patch_mlflow}


class _Finder(importlib.abc.MetaPathFinder):
    """Waits for the top-level ``wandb`` / ``mlflow`` import, lets it finish, then patches."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, name)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self._name = name

    def __getattr__(self, attr: str) -> Any:  # resource readers and the like come from the real loader
        return getattr(self._inner, attr)

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        try:
            _PATCHES[self._name](module)
        except Exception as exc:
            print(
                f"sweeper: cannot follow {self._name} metrics ({exc}); they still reach {self._name}",
                file=sys.stderr,
            )


def install() -> None:
    global _installed
    if (
        _installed
        or os.environ.get("SWEEPER_CAPTURE", "1") == "0"
        or not os.environ.get("SWEEPER_METRICS_PATH")
    ):
        return
    _installed = True
    sys.meta_path.insert(0, _Finder())
