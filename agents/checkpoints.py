"""The trial hook that moves checkpoints between a trial's folder and the checkpoint store.

For an assignment with ``restore_from``, the checkpoint there is fetched into ``<trial>/restore``
before the trial starts (``run.restore_from``). The trial saves into ``<trial>/checkpoint``
(``run.checkpoint_dir``); whenever it logs and the folder changed, and once more when it ends
(stopped trials included: the process has exited, or was killed after the grace period, by
then), the folder is published to ``checkpoint_to`` so agents on other machines can restore it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.agents.trialdir import TrialDir

from sweeper.checkpoints import CheckpointError, fetch, publish, signature
from sweeper.protocol import Assignment, TrialOutcome

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoint"
RESTORE_FOLDER = "restore"


class CheckpointHook:
    def __init__(self) -> None:
        # trial id -> (trial folder, agent working folder, signature last published)
        self._trials: dict[int, tuple[TrialDir, Any, tuple]] = {}

    def on_start(
        self, assignment: Assignment, trial_dir: TrialDir, env: Mapping[str, str]
    ) -> Mapping[str, str]:
        if assignment.checkpoint_to is None and assignment.restore_from is None:
            return {}
        base = trial_dir.path.parents[3]  # <workdir>/.sweeper/trials/<sweep>/<n>
        save = trial_dir.path / CHECKPOINT_FOLDER
        restore = trial_dir.path / RESTORE_FOLDER
        shutil.rmtree(save, ignore_errors=True)  # left by an earlier attempt in this folder
        shutil.rmtree(restore, ignore_errors=True)
        save.mkdir(parents=True)
        extra = {"SWEEPER_CHECKPOINT_DIR": os.fspath(save)}
        self._trials[assignment.trial_id] = (trial_dir, base, ())
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
        self._publish(assignment, final=False)

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None:
        self._publish(assignment, final=True)

    def _publish(self, assignment: Assignment, *, final: bool) -> None:
        found = self._trials.get(assignment.trial_id)
        if found is None:
            return
        trial_dir, base, published = found
        if assignment.checkpoint_to is None:
            if final:
                del self._trials[assignment.trial_id]
            return
        folder = trial_dir.path / CHECKPOINT_FOLDER
        now = signature(folder)
        try:
            if now and now != published:
                publish(folder, assignment.checkpoint_to, base=base)
                published = now
        finally:
            if final:
                del self._trials[assignment.trial_id]
            else:
                self._trials[assignment.trial_id] = (trial_dir, base, published)
