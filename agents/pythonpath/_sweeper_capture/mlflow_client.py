"""MLflow metrics the script logs itself: ``log_metric`` and ``log_batch`` of the tracking client,
which every fluent call (``mlflow.log_metric(s)``) and ``MlflowClient`` end in."""

from __future__ import annotations

import sys
from typing import Any

from . import core


def patch(module: Any) -> None:
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    log_metric = TrackingServiceClient.log_metric
    log_batch = TrackingServiceClient.log_batch

    def patched_metric(self: Any, run_id: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        result = log_metric(self, run_id, key, value, *args, **kwargs)
        step = kwargs.get("step", args[1] if len(args) > 1 else None)
        found = core.number(value)
        if found is not None:
            core.emit("mlflow", int(step or 0), {str(key): found})
        core.raise_if_stopped()
        return result

    def patched_batch(self: Any, run_id: Any, metrics: Any = (), *args: Any, **kwargs: Any) -> Any:
        result = log_batch(self, run_id, metrics, *args, **kwargs)
        by_step: dict[int, dict[str, float]] = {}
        for metric in metrics or ():
            found = core.number(getattr(metric, "value", None))
            if found is not None:
                by_step.setdefault(int(getattr(metric, "step", 0) or 0), {})[str(metric.key)] = found
        for step, values in sorted(by_step.items()):
            core.emit("mlflow", step, values)
        core.raise_if_stopped()
        return result

    TrackingServiceClient.log_metric = patched_metric
    TrackingServiceClient.log_batch = patched_batch
    start_run = module.start_run

    def patched_start_run(*args: Any, **kwargs: Any) -> Any:
        trial = core.current_trial()
        if trial is not None:
            trial.check_environment("mlflow.start_run()")
        return start_run(*args, **kwargs)

    module.start_run = patched_start_run


def active_run_id() -> str | None:
    """The id of the process's active MLflow run (fluent API), if mlflow is imported and one is."""
    mlflow = sys.modules.get("mlflow")
    try:
        active = mlflow.active_run() if mlflow is not None else None
    except Exception:
        return None
    return active.info.run_id if active is not None else None


def end_runs_after(outer: str | None) -> None:
    """End the runs an in-process trial started and left active (in the trial's run, a script
    would have ended them by exiting), down to ``outer``, the one active before it began."""
    mlflow = sys.modules.get("mlflow")
    try:
        while (current := active_run_id()) is not None and current != outer:
            mlflow.end_run()  # type: ignore[union-attr]
    except Exception as exc:
        print(f"sweeper: cannot end the trial's MLflow run: {exc}", file=sys.stderr)
