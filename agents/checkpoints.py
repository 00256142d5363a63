"""The trial hook that moves checkpoints between a trial's folder and the checkpoint store.

For an assignment with ``restore_from``, the checkpoint there is fetched into ``<trial>/restore``
before the trial starts (``run.restore_from``). The trial saves into ``<trial>/checkpoint``
(``run.checkpoint_dir``), and each ``run.log`` after a save copies that folder into
``<trial>/checkpoint-snapshots``. The
agent publishes the newest snapshot to ``checkpoint_to`` as the trial's metrics arrive, so agents
on other machines can restore it; a file the script is still writing is never published. When the
script exits by itself, the folder as it left it is published too. A script that saves without
ever calling ``sweeper.log`` (it logs to W&B only, say) has its folder published as it is found.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.agents.trialdir import TrialDir

from sweeper.checkpoints import SNAPSHOTS_FOLDER, CheckpointError, fetch, newest_snapshot, publish, signature
from sweeper.protocol import Assignment, TrialOutcome
from sweeper.trials import TrialState

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoint"
RESTORE_FOLDER = "restore"


@dataclass
class _Published:
    trial_dir: TrialDir
    base: Path  # the agent's working folder: relative checkpoint locations start there
    signature: tuple = ()  # of what was last published
    snapshot: str | None = None  # the name of the snapshot last published


class CheckpointHook:
    def __init__(self) -> None:
        self._trials: dict[int, _Published] = {}

    def on_start(
        self, assignment: Assignment, trial_dir: TrialDir, env: Mapping[str, str]
    ) -> Mapping[str, str]:
        if assignment.checkpoint_to is None and assignment.restore_from is None:
            return {}
        base = trial_dir.path.parents[3]  # <workdir>/.sweeper/trials/<sweep>/<n>
        save = trial_dir.path / CHECKPOINT_FOLDER
        restore = trial_dir.path / RESTORE_FOLDER
        for left in (save, restore, trial_dir.path / SNAPSHOTS_FOLDER):  # by an earlier attempt here
            shutil.rmtree(left, ignore_errors=True)
        save.mkdir(parents=True)
        (trial_dir.path / SNAPSHOTS_FOLDER).mkdir()  # its presence asks sweeper.log for snapshots
        extra = {"SWEEPER_CHECKPOINT_DIR": os.fspath(save)}
        self._trials[assignment.trial_id] = _Published(trial_dir, base)
        if assignment.restore_from is None:
            return extra
        try:
            found = fetch(assignment.restore_from, restore, base=base)
        except CheckpointError as exc:
            log.error("trial %s: %s; it starts from scratch", assignment.trial_number, exc)
            return extra
        if found:
            extra["SWEEPER_RESTORE_FROM"] = os.fspath(restore)
        else:
            log.error(
                "trial %s: no checkpoint at %s (the trial it copies saved nothing into run.checkpoint_dir); "
                "it starts from scratch",
                assignment.trial_number,
                assignment.restore_from,
            )
        return extra

    def on_metrics(self, assignment: Assignment, records: Sequence[Mapping[str, Any]]) -> None:
        # Records with a ``source`` were captured from wandb.log or MLflow: no snapshot goes with them.
        captured = any("source" in record for record in records)
        self._publish(assignment, final=None, captured=captured)

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None:
        self._publish(assignment, final=outcome, captured=False)

    def _publish(self, assignment: Assignment, *, final: TrialOutcome | None, captured: bool) -> None:
        found = self._trials.get(assignment.trial_id)
        if found is None:
            return
        try:
            if assignment.checkpoint_to is not None:
                self._publish_newest(found, assignment.checkpoint_to, final, captured)
        finally:
            if final is not None:
                del self._trials[assignment.trial_id]
                shutil.rmtree(found.trial_dir.path / SNAPSHOTS_FOLDER, ignore_errors=True)

    def _publish_newest(
        self, trial: _Published, location: str, final: TrialOutcome | None, captured: bool
    ) -> None:
        snapshots = trial.trial_dir.path / SNAPSHOTS_FOLDER
        newest = newest_snapshot(snapshots)
        if newest is not None and newest.name != trial.snapshot:
            publish(newest, location, base=trial.base)
            trial.snapshot, trial.signature = newest.name, signature(newest)
            for older in snapshots.iterdir():
                if not older.name.startswith(".") and older.name < newest.name:
                    shutil.rmtree(older, ignore_errors=True)
        # The live folder itself when nothing can be writing to it (the script exited by itself), or
        # when the script makes no snapshots (it logs to W&B or MLflow only): then as it is found.
        live = trial.trial_dir.path / CHECKPOINT_FOLDER
        without_snapshots = trial.snapshot is None and (captured or final is not None)
        if without_snapshots or (final is not None and final.state is TrialState.FINISHED):
            now = signature(live)
            if now and now != trial.signature:
                publish(live, location, base=trial.base)
                trial.signature = now
