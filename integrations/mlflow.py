"""MLflow adapter: a parent run per sweep, a nested child run per trial.

Parent run: the sweep file (``sweep.yaml``), the method, ``best_<metric>`` and ``<metric>`` (both the
best so far) with step = trials ended,
``leaderboard.csv``/``.json`` and ``best_so_far.png``. Child run (tag ``mlflow.parentRunId``): every
parameter (nested names joined with dots), every metric at its step (``log_batch``), the sweep and
trial tags, the trial's stdout/stderr under ``logs/``, the files the script marked under
``artifacts/``, and a status that matches the trial. The child run exists before the trial starts;
its id goes to the script as MLFLOW_RUN_ID, so ``mlflow.start_run()`` there logs into it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from sweeper.agents.pythonpath._sweeper_capture.mlflow_client import serialise_store_creation
from sweeper.integrations.base import (
    GOING_ON,
    Leaderboard,
    SweepInfo,
    Tracker,
    TrackerRefusedError,
    TrialEnd,
    TrialInfo,
)
from sweeper.integrations.leaderboard import flat, write_board_files
from sweeper.integrations.settings import MlflowSettings, mlflow_settings

from sweeper.redact import redact_urls
from sweeper.trials import MetricPoint, TrialState

log = logging.getLogger("sweeper.integrations")

STATUS = {
    TrialState.FINISHED: "FINISHED",
    TrialState.FAILED: "FAILED",
    TrialState.STOPPED: "KILLED",
    TrialState.LOST: "KILLED",
    TrialState.RUNNING: "RUNNING",
}
# The agent's own calls fail fast and are retried by SafeTracker, and print no "View run" links
# among its progress lines; the trial gets the settings the process had (MLflow's defaults).
_AGENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
_trial_settings: dict[str, str] | None = None  # what trials get (see MlflowTracker._agent_settings)
# ... kept in the environment too, for the processes this one starts (agents, tests' drivers).
_TRIAL_SETTINGS_VARIABLE = "SWEEPER_MLFLOW_TRIAL_HTTP"
_trial_settings_lock = threading.Lock()
_PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
}
# Answers of a server that will not change by themselves, and what to do about each.
_REFUSALS = {
    "UNAUTHENTICATED": "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN",
    "PERMISSION_DENIED": "this user may not read or write experiments there; ask its administrator",
    "ENDPOINT_NOT_FOUND": "no MLflow tracking API there; the tracking URI is the address `mlflow server` "
    "prints, with no path unless the server is served under one",
}
_EXPERIMENT = "sweeper"  # the experiment sweeps go to when none is named
_MAX_METRICS, _MAX_PARAMS = 1000, 100  # per log_batch call, MLflow's own limits
_BAD_KEY = re.compile(r"[^\w\-. /]")
_API_CALL = re.compile(r"(API request to \S+)")
_CONNECTION_CAUSE = re.compile(
    r"\[Errno -?\d+\] [^'\")]+|Read timed out|Connection aborted|Connection broken: \w+"
)


def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)[:250] or "_"


class MlflowTracker(Tracker):
    name = "MLflow"

    def __init__(self, settings: MlflowSettings) -> None:
        import mlflow  # noqa: F401  (fails early, with an ImportError the session reports)
        from mlflow.tracking import MlflowClient

        self.settings = settings
        # Credentials are named where the server refuses them (refusal), not for a server down.
        uri = redact_urls(settings.tracking_uri, keep_user=False)
        self.help = f"check that the MLflow tracking server at {uri} is up"

        # A trial whose run could not be made (MLflow down) still logs to this server, not to a
        # ./mlflow.db of its own, with MLflow's own retries, not the agent's.
        self.always_env = {"MLFLOW_TRACKING_URI": settings.tracking_uri, **self._agent_settings()}
        if settings.experiment_id is not None:
            self.always_env["MLFLOW_EXPERIMENT_ID"] = settings.experiment_id
        else:
            self.always_env["MLFLOW_EXPERIMENT_NAME"] = settings.experiment or _EXPERIMENT
        try:  # agents starting together on a new sqlite: store take turns creating it
            serialise_store_creation()
        except Exception as exc:  # an MLflow laid out otherwise: open it as it always opened
            log.warning("MLflow's local database opens unserialised (%s)", exc)
        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        self._experiment_id: str | None = settings.experiment_id
        self._parents: dict[str, str] = {}
        self._runs: dict[int, str] = {}
        self._logged_best: dict[str, set[int]] = {}
        self._lost_seen: dict[str, set[int]] = {}  # by sweep: lost trials whose runs were ended
        self._lock = threading.Lock()

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> MlflowTracker:
        return cls(mlflow_settings(block))

    @staticmethod
    def _agent_settings() -> dict[str, str]:
        """Set the agent's MLflow settings in this process, once; returns the ones trials get: the
        process's own, read before the first tracker set the agent's (later trackers would read
        the agent's back)."""
        from mlflow import environment_variables as ev

        def default(name: str) -> str:  # MLflow's, where this MLflow knows the setting (2.x lacks some)
            setting = getattr(ev, name, None)
            return str(setting.default) if setting is not None else "false"

        global _trial_settings
        with _trial_settings_lock:
            if _trial_settings is None:
                try:  # a process an agent's process started inherits the agent's settings: not its own
                    inherited = json.loads(os.environ[_TRIAL_SETTINGS_VARIABLE])
                    if not isinstance(inherited, dict):
                        raise ValueError(inherited)
                    # One the marking process did not set (an older sweeper's) is MLflow's default.
                    _trial_settings = {
                        name: str(inherited.get(name, default(name))) for name in _AGENT_SETTINGS
                    }
                except (KeyError, ValueError):
                    _trial_settings = {
                        name: os.environ.get(name) or default(name) for name in _AGENT_SETTINGS
                    }
                    os.environ[_TRIAL_SETTINGS_VARIABLE] = json.dumps(_trial_settings)
                for name, value in _AGENT_SETTINGS.items():
                    os.environ.setdefault(name, value)
            return dict(_trial_settings)

    def check(self) -> None:
        """A server that refuses these credentials, or has no MLflow API at this address (a URI
        with a path the server does not serve), is said now rather than retried as unreachable."""
        if not self.settings.tracking_uri.lower().startswith(("http://", "https://")):
            return  # a local store: nothing to ask, and asking would create it
        try:  # the tracker's own first call, which a proxy that lets the tracking calls through allows
            if self.settings.experiment_id is not None:
                self.client.get_experiment(self.settings.experiment_id)
            else:
                self.client.get_experiment_by_name(self.settings.experiment or _EXPERIMENT)
        except Exception as exc:
            refused = self.refusal(exc)
            if refused is not None:
                raise TrackerRefusedError(refused) from exc
            # Down, busy or not answering: the sweep runs, and its records wait for the server.

    def refusal(self, exc: BaseException) -> str | None:
        from mlflow.exceptions import MlflowException

        fix = _REFUSALS.get(exc.error_code) if isinstance(exc, MlflowException) else None
        if fix is None:
            return None
        uri = redact_urls(self.settings.tracking_uri, keep_user=False)
        return f"the server at {uri} answered {exc.get_http_status_code()}: {fix}"

    def failure(self, exc: BaseException) -> str:
        # MLflow wraps a connection error in urllib3's whole story; its last words say what happened.
        text = str(exc)
        cause = _CONNECTION_CAUSE.search(text)
        if cause is not None and (call := _API_CALL.match(text)) is not None:
            return f"{call.group(1)} failed: {cause.group(0)}"
        return super().failure(exc)

    def is_transient(self, exc: BaseException) -> bool:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException):
            return exc.error_code not in _PERMANENT
        return True  # connection errors, a locked SQLite file, timeouts

    # -- experiment and parent run -------------------------------------------------------------

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            name = self.settings.experiment or _EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(name)
                except MlflowException as exc:  # another agent made it first
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise exc from None
                    self._experiment_id = found.experiment_id
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def parent_run(self, sweep_id: str, name: str | None = None) -> str:
        """The sweep's parent run: found by its tags (agents on other machines share it), else made."""
        with self._lock:
            if sweep_id in self._parents:
                return self._parents[sweep_id]
            run_id = self._first_parent(sweep_id)
            if run_id is None:
                tags = {"sweeper.sweep_id": sweep_id, "sweeper.role": "sweep"}
                made = self.client.create_run(
                    self.experiment_id(), tags=tags, run_name=name or f"sweep-{sweep_id}"
                )
                # Made at the same moment elsewhere too (the server and an agent started with the
                # sweep, agents started together): every process that sees both keeps the first.
                run_id = self._first_parent(sweep_id) or made.info.run_id
                if run_id != made.info.run_id:
                    self._set_aside(made.info.run_id, run_id)
            self._parents[sweep_id] = run_id
            return run_id

    def _set_aside(self, run_id: str, kept: str) -> None:
        """Take a parent run made beside the one kept out of the sweep's runs: ended, and no longer
        a sweep run (a process that took it meanwhile still logs into it, which a deleted run
        would refuse). Left as it is where this user may not change it."""
        with contextlib.suppress(Exception):
            self.client.set_tag(run_id, "sweeper.role", "sweep-duplicate")
            self.client.set_tag(run_id, "sweeper.duplicate_of", kept)
            self.client.set_terminated(run_id, status="KILLED")

    def _first_parent(self, sweep_id: str) -> str | None:
        """The sweep's parent run made first (the same for every process that sees them all)."""
        query = f"tags.`sweeper.sweep_id` = '{sweep_id}' and tags.`sweeper.role` = 'sweep'"
        found = self.client.search_runs([self.experiment_id()], query, max_results=100)
        first = min(found, key=lambda run: (run.info.start_time, run.info.run_id), default=None)
        return first.info.run_id if first is not None else None

    def sweep_started(self, sweep: SweepInfo) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self.parent_run(sweep.sweep_id, sweep.name)
        params = [Param("method", sweep.method)]
        if sweep.metric_name:
            params += [Param("metric", sweep.metric_name), Param("goal", sweep.goal)]
        tags = [RunTag("sweeper.method", sweep.method), RunTag("sweeper.state", "running")]
        self.client.log_batch(run_id, params=params, tags=tags)
        if self.client.get_run(run_id).info.status != "RUNNING":  # a stopped sweep taken up again
            self.client.update_run(run_id, status="RUNNING")  # MLflow keeps its end time meanwhile
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sweep.yaml"
            path.write_text(yaml.safe_dump(dict(sweep.spec), sort_keys=False), encoding="utf-8")
            self.client.log_artifact(run_id, os.fspath(path))

    def leaderboard(self, board: Leaderboard) -> None:
        from mlflow.entities import Metric

        run_id = self.parent_run(board.sweep_id)
        now = int(time.time() * 1000)
        metrics = []
        logged: set[int] = set()
        if board.metric_name:
            name = _key(board.metric_name)
            if board.sweep_id not in self._logged_best:  # what an earlier process logged (a restart)
                history = self.client.get_metric_history(run_id, f"best_{name}")
                self._logged_best[board.sweep_id] = {m.step for m in history}
            logged = self._logged_best[board.sweep_id]
            # Step: trials ended so far, so that the latest value, which the runs table shows, is
            # the sweep's best (trials end out of their numbers' order). Under the metric's own
            # name too, as the sweep's value; each trial's own is in its child run.
            for ended, (_, best) in enumerate(board.best_so_far(), 1):
                if ended not in logged:
                    metrics.extend(Metric(key, best, now, ended) for key in (f"best_{name}", name))
        for i in range(0, len(metrics), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS])
        logged.update(m.step for m in metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_board_files(board, Path(tmp))
            self.client.log_artifacts(run_id, tmp)
        self._end_lost_runs(board)

    def _end_lost_runs(self, board: Leaderboard) -> None:
        """End the runs of trials lost with their agent (killed, its machine gone): no agent is
        left to end them, and MLflow would show them running for ever."""
        from mlflow.entities import RunTag

        seen = self._lost_seen.setdefault(board.sweep_id, set())
        lost = {
            row.number: row
            for row in board.rows
            if row.state == TrialState.LOST.value and row.number not in seen
        }
        if not lost:
            return
        query = (
            f"tags.`sweeper.sweep_id` = '{board.sweep_id}' and tags.`sweeper.role` = 'trial' "
            "and attributes.status = 'RUNNING'"
        )
        for run in self._every_run(query):
            row = lost.get(_number(run.data.tags.get("sweeper.trial_number")) or 0)
            if row is not None:
                tags = [RunTag("sweeper.state", row.state)]
                if row.stop_reason:
                    tags.append(RunTag("sweeper.stop_reason", row.stop_reason[:5000]))
                self.client.log_batch(run.info.run_id, tags=tags)
                self.client.set_terminated(run.info.run_id, STATUS[TrialState.LOST])
        seen.update(lost)  # once every run found is ended: a failed call is retried whole

    def _every_run(self, query: str) -> Iterator[Any]:
        """The runs of the experiment that ``query`` finds, a page at a time."""
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id()], query, max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def sweep_ended(self, sweep_id: str, state: str) -> None:
        """The record's end here. A sweep that goes on (``--count`` reached, agents elsewhere at
        work) keeps its run RUNNING, as ``sweeper status`` shows the sweep."""
        run_id = self.parent_run(sweep_id)
        self.client.set_tag(run_id, "sweeper.state", state)
        if state not in GOING_ON:
            self.client.set_terminated(run_id, "KILLED" if state in ("stopped", "cancelled") else "FINISHED")

    # -- trials --------------------------------------------------------------------------------

    def trial_started(self, trial: TrialInfo) -> Mapping[str, str]:
        from mlflow.entities import Param

        parent = self.parent_run(trial.sweep_id)
        tags = {
            "mlflow.parentRunId": parent,
            "sweeper.sweep_id": trial.sweep_id,
            "sweeper.trial_id": str(trial.trial_id),
            "sweeper.trial_number": str(trial.trial_number),
            "sweeper.role": "trial",
            "sweeper.state": TrialState.RUNNING.value,
            **{f"sweeper.{k}": str(v) for k, v in trial.tags.items()},
        }
        run = self.client.create_run(
            self.experiment_id(), tags=tags, run_name=f"{trial.sweep_id}-{trial.trial_number}"
        )
        run_id = run.info.run_id
        self._runs[trial.trial_id] = run_id
        params = [Param(_key(k), str(v)[:6000]) for k, v in flat(dict(trial.config)).items()]
        for i in range(0, len(params), _MAX_PARAMS):
            self.client.log_batch(run_id, params=params[i : i + _MAX_PARAMS])
        # The experiment by id, and by name when named: an MLFLOW_EXPERIMENT_NAME the agent inherited
        # that names another one would make MLflow refuse the script's next start_run().
        return {**self.always_env, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": self.experiment_id()}

    def trial_metrics(self, trial: TrialInfo, points: Sequence[MetricPoint], source: str) -> None:
        from mlflow.entities import Metric

        if source == "mlflow":  # the script logged these into this very run already
            return
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        metrics = [Metric(_key(p.name), p.value, int(p.time * 1000), p.step) for p in points]
        for i in range(0, len(metrics), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS])

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        from mlflow.entities import RunTag

        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        for path in end.logs:
            self.client.log_artifact(run_id, os.fspath(path), "logs")
        for path in end.artifacts:
            if path.is_dir():
                self.client.log_artifacts(run_id, os.fspath(path), f"artifacts/{path.name}")
            elif path.exists():
                self.client.log_artifact(run_id, os.fspath(path), "artifacts")
        tags = [RunTag("sweeper.state", end.state.value)]
        if end.stop_reason:
            tags.append(RunTag("sweeper.stop_reason", end.stop_reason[:5000]))
        if end.exit_code is not None:
            tags.append(RunTag("sweeper.exit_code", str(end.exit_code)))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, STATUS[end.state])
        self._runs.pop(trial.trial_id, None)


def _number(tag: str | None) -> int | None:
    try:
        return int(tag) if tag is not None else None
    except ValueError:
        return None
