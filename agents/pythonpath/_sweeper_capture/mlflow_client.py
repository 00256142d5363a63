"""MLflow metrics the script logs itself: ``log_metric`` and ``log_batch`` of the tracking client,
which every fluent call (``mlflow.log_metric(s)``) and ``MlflowClient`` end in."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from . import core, mlflow_params


def patch(module: Any) -> None:
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    log_metric = TrackingServiceClient.log_metric
    log_batch = TrackingServiceClient.log_batch
    log_param = TrackingServiceClient.log_param

    def patched_param(self: Any, run_id: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        if not mlflow_params.already_logged(run_id, key, value):
            return log_param(self, run_id, key, value, *args, **kwargs)
        # The run holds it (MLflow would refuse it under another spelling): done, as MLflow says it.
        if kwargs.get("synchronous", args[0] if args else True):
            return None
        from mlflow.utils.async_logging.run_operations import RunOperations

        return RunOperations([])

    def patched_metric(self: Any, run_id: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        result = log_metric(self, run_id, key, value, *args, **kwargs)
        step = kwargs.get("step", args[1] if len(args) > 1 else None)
        found = core.number(value)
        if found is not None:
            _emit(run_id, int(step or 0), {str(key): found})
        core.raise_if_stopped()
        return result

    def patched_batch(
        self: Any, run_id: Any, metrics: Any = (), params: Any = (), *args: Any, **kwargs: Any
    ) -> Any:
        kept = [p for p in params or () if not mlflow_params.already_logged(run_id, p.key, p.value)]
        result = log_batch(self, run_id, metrics, kept, *args, **kwargs)
        by_step: dict[int, dict[str, float]] = {}
        for metric in metrics or ():
            found = core.number(getattr(metric, "value", None))
            if found is not None:
                by_step.setdefault(int(getattr(metric, "step", 0) or 0), {})[str(metric.key)] = found
        for step, values in sorted(by_step.items()):
            _emit(run_id, step, values)
        core.raise_if_stopped()
        return result

    create_run = TrackingServiceClient.create_run

    def patched_create_run(self: Any, experiment_id: Any, *args: Any, **kwargs: Any) -> Any:
        run = create_run(self, experiment_id, *args, **kwargs)
        # Every run made nested (start_run(nested=True), autolog's child runs, a client's run
        # tagged with a parent) names its parent in this tag.
        with contextlib.suppress(Exception):
            tags = kwargs.get("tags", args[1] if len(args) > 1 else None) or {}
            parent = dict(tags).get("mlflow.parentRunId")
            if parent is not None and _in_trial_run(parent):
                _under_trial_run.add(str(run.info.run_id))
        return run

    TrackingServiceClient.create_run = patched_create_run
    TrackingServiceClient.log_metric = patched_metric
    TrackingServiceClient.log_batch = patched_batch
    TrackingServiceClient.log_param = patched_param
    start_run = module.start_run

    def patched_start_run(*args: Any, **kwargs: Any) -> Any:
        mlflow_params.remember_trial_run()  # start_run takes MLFLOW_RUN_ID out of the environment
        if not args and not kwargs.get("run_id"):
            _leave_the_trial_run_in_another_experiment()
        trial = core.current_trial()
        if trial is not None:
            trial.check_environment("mlflow.start_run()")
        return start_run(*args, **kwargs)

    module.start_run = patched_start_run
    try:  # last, so that a failure here leaves the metric capture in place
        serialise_store_creation()
    except Exception as exc:
        print(f"sweeper: MLflow's local database opens unserialised ({exc})", file=sys.stderr)


_under_trial_run: set[str] = set()  # runs the script started nested in the trial's run, or in one of these


def _in_trial_run(run_id: Any) -> bool:
    """The trial's run, or a run the script started nested in it: what the trial's MLflow record
    holds (nested runs show under it)."""
    return mlflow_params.is_trial_run(run_id) or str(run_id) in _under_trial_run


def _emit(run_id: Any, step: int, values: dict[str, float]) -> None:
    """Metrics logged into the trial's run, or a run nested in it, are in the trial's MLflow record
    already (trackers leave them alone); those logged into any other run (one started after the
    script ended the trial's, one in an experiment of its own, one made with ``MlflowClient``)
    reach the trial's run through sweeper's MLflow tracker."""
    core.emit("mlflow" if _in_trial_run(run_id) else "script", step, values, seq=core.next_seq("mlflow"))


def _leave_the_trial_run_in_another_experiment() -> None:
    """A script that set an experiment of its own (``mlflow.set_experiment``) cannot start the
    trial's run, which is in the sweep's experiment: MLflow refuses, and every trial failed. Its
    run is then made in its experiment, as without sweeper, and said once."""
    trial_run = os.environ.get("MLFLOW_RUN_ID")
    chosen = getattr(sys.modules.get("mlflow.tracking.fluent"), "_active_experiment_id", None)
    theirs = mlflow_params.trial_experiment
    if not trial_run or chosen is None or theirs is None or str(chosen) == theirs:
        return
    del os.environ["MLFLOW_RUN_ID"]
    print(
        f"sweeper: the script set MLflow experiment {chosen}, so its run is made there, outside the "
        f"sweep's experiment ({theirs}); the trial's run there gets its metrics from sweeper",
        file=sys.stderr,
    )


def serialise_store_creation() -> None:
    """Processes that start together must not create MLflow's local database together.

    Without a tracking URI, MLflow keeps runs in ``./mlflow.db``, and the first process to open it
    creates its tables and runs its migrations. Two trials doing that at once fail ("table
    experiments already exists", "Online migration expected to match one row"), so every trial
    but one of a fresh sweep failed; two agents logging to one new ``sqlite:`` store did the
    same. MLflow's builder of SQLite stores, which it runs once per process and database, now
    holds a lock file named after the database while it runs. Once per process: a second lock
    on the same file from the same process would wait for itself.
    """
    from mlflow.tracking._tracking_service import utils

    registry = getattr(utils, "_tracking_store_registry", None)
    build = getattr(registry, "_registry", {}).get("sqlite")
    if build is None or getattr(build, "sweeper_serialised", False):
        return  # an MLflow laid out otherwise, without SQLAlchemy, or already done

    def build_serialised(store_uri: Any, artifact_uri: Any = None) -> Any:
        # MLflow builds a store once per process and URI (then it caches it): only then, the lock.
        with _held(str(store_uri)):
            return build(store_uri=store_uri, artifact_uri=artifact_uri)

    build_serialised.sweeper_serialised = True  # type: ignore[attr-defined]
    registry.register("sqlite", build_serialised)


def _lock_path(uri: str) -> str:
    """A lock file in the temporary folder named after the database file's absolute path, so that
    ``sqlite:///mlflow.db`` in two folders are two locks and two spellings of one file are one."""
    import hashlib

    database = uri.split(":///", 1)[-1].split("?", 1)[0]
    digest = hashlib.sha256(os.path.abspath(database).encode("utf-8", "replace")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"sweeper-mlflow-{digest}.lock")


@contextlib.contextmanager
def _held(uri: str) -> Iterator[None]:
    """An exclusive lock across processes for the database of ``uri``; none where it cannot be had
    (no ``fcntl``, a temporary folder it cannot use): the script then runs as without sweeper."""
    descriptor = None
    try:
        import fcntl

        path = _lock_path(uri)
        try:  # read-only is enough for flock, and works on a file another user created
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except (ImportError, OSError, ValueError):
        pass  # unlocked, as without sweeper
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # closing releases the lock


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
