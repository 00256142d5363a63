"""Trial hooks: small callbacks an agent calls as each trial starts, logs and ends.

Trackers plug in here (``sweeper.integrations``), and so does the metric capture that lets a script
which logs only to W&B or MLflow feed the coordinator. A hook that raises is logged and ignored:
no hook can fail or hold up a trial.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from sweeper.agents.trialdir import TrialDir

from sweeper.protocol import Assignment, TrialOutcome

log = logging.getLogger(__name__)

#: Put first on a trial's PYTHONPATH: its ``sitecustomize`` arms the capture in the trial process.
CAPTURE_PATH = Path(__file__).resolve().parent / "pythonpath"


class TrialHook(Protocol):
    def on_start(
        self,
        assignment: Assignment,
        trial_dir: TrialDir,
        env: Mapping[str, str],
        stopping: threading.Event | None = None,
    ) -> Mapping[str, str]:
        """Called before the trial runs; returns variables to add to its environment.

        ``stopping`` is set once the trial is not to run after all (the agent is stopping, the
        coordinator stopped the trial or the sweep, or the lease was lost): a hook that waits on
        something (a tracker's run) gives up then, so the stop does not wait for it.
        """
        ...

    def on_metrics(self, assignment: Assignment, records: Sequence[Mapping[str, Any]]) -> None:
        """New metrics.jsonl records (``seq``, ``step``, ``time``, ``metrics``, optional ``source``)."""
        ...

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None: ...


class CaptureHook:
    """Makes ``wandb.log`` and ``mlflow.log_metric(s)`` in the trial also reach metrics.jsonl."""

    def on_start(
        self,
        assignment: Assignment,
        trial_dir: TrialDir,
        env: Mapping[str, str],
        stopping: threading.Event | None = None,
    ) -> Mapping[str, str]:
        if env.get("SWEEPER_CAPTURE") == "0":
            return {}
        current = env.get("PYTHONPATH", "")
        return {"PYTHONPATH": os.pathsep.join(p for p in (os.fspath(CAPTURE_PATH), current) if p)}

    def on_metrics(self, assignment: Assignment, records: Sequence[Mapping[str, Any]]) -> None:
        pass

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None:
        pass


def default_hooks() -> list[TrialHook]:
    """The capture, checkpoints (method pbt), and the trackers named in each assignment's
    ``integrations`` block."""
    from sweeper.agents.checkpoints import CheckpointHook
    from sweeper.integrations.hook import TrackerHook  # light: trackers load only when configured

    return [CaptureHook(), CheckpointHook(), TrackerHook()]


class TrialHooks:
    """Calls every hook in turn, each one shielded from the others and from the agent."""

    def __init__(self, hooks: Sequence[TrialHook]) -> None:
        self.hooks = list(hooks)
        self._hear_stops = [_takes_stopping(hook) for hook in self.hooks]

    def start(
        self,
        assignment: Assignment,
        trial_dir: TrialDir,
        env: Mapping[str, str],
        stopping: threading.Event | None = None,
    ) -> dict[str, str]:
        """The variables the hooks add to the trial's environment (see :meth:`TrialHook.on_start`)."""
        stopping = threading.Event() if stopping is None else stopping
        extra: dict[str, str] = {}
        for hook, hears_stops in zip(self.hooks, self._hear_stops, strict=True):
            if stopping.is_set():  # the trial will not run: what is left to set up is not needed
                break
            given = {**env, **extra}
            try:
                if hears_stops:
                    extra.update(hook.on_start(assignment, trial_dir, given, stopping) or {})
                else:  # a hook written before on_start took the stop
                    extra.update(hook.on_start(assignment, trial_dir, given) or {})  # type: ignore[call-arg]
            except Exception:
                log.exception("trial %s: hook %r failed at the start", assignment.trial_number, hook)
        return extra

    def metrics(self, assignment: Assignment, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        for hook in self.hooks:
            try:
                hook.on_metrics(assignment, records)
            except Exception:
                log.exception("trial %s: hook %r failed on metrics", assignment.trial_number, hook)

    def end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None:
        # In the reverse order of their starts, as nested blocks end: a hook that set something up
        # for the trial (the checkpoint folder) takes it down after the hooks that came after it
        # are done with it (trackers uploading files the script marked in that folder).
        for hook in reversed(self.hooks):
            try:
                hook.on_end(assignment, outcome, trial_dir)
            except Exception:
                log.exception("trial %s: hook %r failed at the end", assignment.trial_number, hook)


def _takes_stopping(hook: TrialHook) -> bool:
    """Whether ``hook.on_start`` takes the ``stopping`` argument (hooks written before it do not)."""
    try:
        parameters = list(inspect.signature(hook.on_start).parameters.values())
    except (TypeError, ValueError):  # no signature to read: give it everything
        return True
    return len(parameters) >= 4 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
