"""Metric capture for scripts that log to W&B or MLflow themselves.

When (and only when) the trial imports ``wandb`` or ``mlflow``, their logging calls are wrapped:
each call still does exactly what it did, and the numbers it logged are also appended, as one line,
to ``SWEEPER_METRICS_PATH`` in the agent's metrics.jsonl format, with a ``source`` naming the tracker.
The agent tails that file, so the coordinator sees the values while the trial runs.

Standard library only; every wrapper swallows its own errors so the script's logging is untouched.
"""

from __future__ import annotations

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


def _patch_wandb(module: Any) -> None:
    from wandb.sdk import wandb_run  # already imported by ``import wandb``

    run_cls = wandb_run.Run
    original = run_cls._log

    def _log(self: Any, data: Any, step: Any = None, commit: Any = None) -> Any:
        try:
            at = int(step) if step is not None else int(getattr(self, "_local_step", 0))
        except Exception:
            at = 0
        result = original(self, data, step, commit)
        try:
            emit("wandb", at, _flat(data))
        except Exception:
            pass
        return result

    run_cls._log = _log
    init = module.init

    def wandb_init(*args: Any, **kwargs: Any) -> Any:
        run = init(*args, **kwargs)
        # Tells the agent's W&B adapter that the script keeps its own run for this trial.
        _mark(
            "wandb-run.json", json.dumps({"id": getattr(run, "id", None), "dir": getattr(run, "dir", None)})
        )
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
