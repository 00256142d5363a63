"""The trial hook that moves checkpoints between a trial's folder and the checkpoint store.

For an assignment with ``restore_from``, the checkpoint there is fetched into ``<trial>/restore``
before the trial starts (``run.restore_from``); a retry of lost attempts fetches instead the
newest checkpoint they published (``resume_from``), so it goes on where they were cut short.
The trial saves into ``<trial>/checkpoint`` (``run.checkpoint_dir``), and each ``run.log`` after a
save copies that folder into ``<trial>/checkpoint-snapshots``. As the trial's metrics arrive, a
thread of the hook publishes the newest snapshot to ``checkpoint_to``, so agents on other machines
can restore it; a file the script is still writing is never published. When the trial ends its
last snapshot is published, and when the script exited by itself, the folder as it left it. A
script that saves without ever calling ``sweeper.log`` (it logs to W&B only, say) has its folder
published as it is found.
Once the trial has ended, its local copies go (the published one is its checkpoint); one that
was not published stays in ``<trial>/checkpoint``.

An assignment also names the sweep's published checkpoints that nothing can restore from any more
(:mod:`sweeper.checkpoints.retention`); a thread of the hook removes them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.agents.trialdir import TrialDir

from sweeper.checkpoints import (
    SNAPSHOTS_FOLDER,
    CheckpointError,
    fetch,
    newest_snapshot,
    publish,
    remove,
    signature,
)
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
    """Publishes on a thread of its own while a trial runs, so a slow store (a large checkpoint, an
    object store far away, a server that is down) never holds up the agent's heartbeats."""

    def __init__(self) -> None:
        self._trials: dict[int, _Published] = {}
        self._changed = threading.Condition()
        self._due: dict[int, tuple[Assignment, bool]] = {}  # trial id -> (assignment, captured)
        self._publishing: int | None = None  # the trial whose checkpoint the thread is publishing
        self._thread: threading.Thread | None = None
        self._removed: set[str] = set()  # checkpoints removed, or being removed, by this agent

    def on_start(
        self,
        assignment: Assignment,
        trial_dir: TrialDir,
        env: Mapping[str, str],
        stopping: threading.Event | None = None,
    ) -> Mapping[str, str]:
        base = trial_dir.path.parents[3]  # <workdir>/.sweeper/trials/<sweep>/<n>
        try:
            return self._prepare(assignment, trial_dir, base)
        finally:  # once this trial has fetched what it starts from; never one of its own
            own = (assignment.restore_from, assignment.checkpoint_to, *assignment.resume_from)
            self._remove_unneeded([c for c in assignment.discard_checkpoints if c not in own], base)

    def _prepare(self, assignment: Assignment, trial_dir: TrialDir, base: Path) -> Mapping[str, str]:
        """The trial's checkpoint folders, and the one it starts from fetched: its environment."""
        if assignment.checkpoint_to is None and assignment.restore_from is None:
            return {}
        save = trial_dir.path / CHECKPOINT_FOLDER
        restore = trial_dir.path / RESTORE_FOLDER
        for left in (save, restore, trial_dir.path / SNAPSHOTS_FOLDER):  # by an earlier attempt here
            shutil.rmtree(left, ignore_errors=True)
        save.mkdir(parents=True)
        (trial_dir.path / SNAPSHOTS_FOLDER).mkdir()  # its presence asks sweeper.log for snapshots
        extra = {"SWEEPER_CHECKPOINT_DIR": os.fspath(save)}
        with self._changed:
            self._trials[assignment.trial_id] = _Published(trial_dir, base)
        if self._resumed(assignment, restore, base):
            extra["SWEEPER_RESTORE_FROM"] = os.fspath(restore)
            return extra
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
                "trial %s: no checkpoint at %s: the trial it copies saved nothing into run.checkpoint_dir, "
                "or it ran on an agent that keeps its checkpoints elsewhere (set sweeper.pbt.checkpoints "
                "to a folder or URL every agent reaches); it starts from scratch",
                assignment.trial_number,
                assignment.restore_from,
            )
        return extra

    def _resumed(self, assignment: Assignment, restore: Path, base: Path) -> bool:
        """Whether one of the checkpoints that the lost attempts this trial retries published is
        fetched into ``restore``: the trial goes on from there rather than from where they started."""
        unreachable = False
        for location in assignment.resume_from:
            try:
                if fetch(location, restore, base=base):
                    log.warning(  # shown: the trial's curve starts where this checkpoint ends
                        "trial %s resumes from %s, published before its last attempt was lost",
                        assignment.trial_number,
                        location,
                    )
                    return True
            except CheckpointError as exc:
                unreachable = True
                log.warning("trial %s: %s; it tries the one before", assignment.trial_number, exc)
        if assignment.resume_from:
            what = "could not be fetched" if unreachable else "were not published"
            log.warning(
                "trial %s: the checkpoints of its lost attempts %s; it starts from %s",
                assignment.trial_number,
                what,
                assignment.restore_from or "scratch",
            )
        return False

    def _remove_unneeded(self, locations: Sequence[str], base: Path) -> None:
        """Remove, on a thread of its own, those of ``locations`` this agent has not removed yet: a
        large checkpoint on a network file system or in an object store takes a while to delete."""
        with self._changed:
            todo = [location for location in locations if location not in self._removed]
            self._removed.update(todo)
        if todo:
            threading.Thread(
                target=self._remove_all, args=(todo, base), name="checkpoint-removal", daemon=True
            ).start()

    def _remove_all(self, locations: Sequence[str], base: Path) -> None:
        for location in locations:
            try:
                remove(location, base=base)
            except Exception as exc:  # the next assignment that names it tries again
                shown = exc if isinstance(exc, CheckpointError) else f"cannot remove {location}: {exc!r}"
                log.warning("%s; it stays for now", shown)
                with self._changed:
                    self._removed.discard(location)

    def on_metrics(self, assignment: Assignment, records: Sequence[Mapping[str, Any]]) -> None:
        if assignment.checkpoint_to is None:
            return
        # Records with a ``source`` were captured from wandb.log or MLflow: no snapshot goes with them.
        captured = any("source" in record for record in records)
        with self._changed:
            if assignment.trial_id not in self._trials:
                return
            _, before = self._due.get(assignment.trial_id, (assignment, False))
            self._due[assignment.trial_id] = (assignment, captured or before)
            if self._thread is None:
                self._thread = threading.Thread(target=self._publish_due, name="checkpoints", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def on_end(self, assignment: Assignment, outcome: TrialOutcome, trial_dir: TrialDir) -> None:
        with self._changed:
            self._due.pop(assignment.trial_id, None)
            while self._publishing == assignment.trial_id:
                self._changed.wait()
            trial = self._trials.pop(assignment.trial_id, None)
        if trial is None:
            return
        published = False
        try:
            if assignment.checkpoint_to is not None:
                self._publish_newest(trial, assignment.checkpoint_to, outcome, captured=False)
                published = bool(trial.signature)
        except CheckpointError as exc:
            log.error("trial %s: %s", assignment.trial_number, exc)
        finally:
            self._clear_up(trial_dir, outcome, published, assignment.trial_number)

    def _clear_up(self, trial_dir: TrialDir, outcome: TrialOutcome, published: bool, number: int) -> None:
        """Each folder is a whole checkpoint, and a population runs many trials: on a GPU machine's
        disk they would add up to one model's size three times per trial. The copy fetched to start
        from is done with; the trial's own checkpoint is kept only when it was not published, and
        then, unless the script exited by itself, as its last whole snapshot: a stop or a crash may
        have cut a save short in the folder itself."""
        snapshots = trial_dir.path / SNAPSHOTS_FOLDER
        live = trial_dir.path / CHECKPOINT_FOLDER
        newest = newest_snapshot(snapshots)
        if not published and outcome.state is not TrialState.FINISHED and newest is not None:
            shutil.rmtree(live, ignore_errors=True)
            try:
                os.replace(newest, live)
            except OSError as exc:  # a process of the trial still writes there, say: keep both
                log.warning("trial %s: its last whole checkpoint stays in %s (%s)", number, newest, exc)
                return
        shutil.rmtree(snapshots, ignore_errors=True)
        shutil.rmtree(trial_dir.path / RESTORE_FOLDER, ignore_errors=True)
        if published or not signature(live):  # published, or nothing was ever saved
            _remove_all_but_marked(live, trial_dir)
        else:
            log.warning("trial %s: its checkpoint stays in %s: its last publish failed", number, live)

    def _publish_due(self) -> None:
        while True:
            with self._changed:
                while not self._due:
                    self._changed.wait()
                trial_id, (assignment, captured) = self._due.popitem()
                trial = self._trials.get(trial_id)
                if trial is None:
                    continue
                self._publishing = trial_id
            try:
                assert assignment.checkpoint_to is not None
                self._publish_newest(trial, assignment.checkpoint_to, None, captured)
            except CheckpointError as exc:
                log.warning("trial %s: %s; the next log tries again", assignment.trial_number, exc)
            except Exception:
                log.exception("trial %s: publishing its checkpoint failed", assignment.trial_number)
            finally:
                with self._changed:
                    self._publishing = None
                    self._changed.notify_all()

    def _publish_newest(
        self, trial: _Published, location: str, final: TrialOutcome | None, captured: bool
    ) -> None:
        snapshots = trial.trial_dir.path / SNAPSHOTS_FOLDER
        newest = newest_snapshot(snapshots)
        if newest is not None and newest.name != trial.snapshot:
            # Older snapshots will never be published, whether or not this publish succeeds: while a
            # store stays down they would pile up, one checkpoint's size per log.
            for older in snapshots.iterdir():
                if not older.name.startswith(".") and older.name < newest.name:
                    shutil.rmtree(older, ignore_errors=True)
            publish(newest, location, base=trial.base)
            trial.snapshot, trial.signature = newest.name, signature(newest)
        # The live folder itself when nothing can be writing to it (the script exited by itself), or
        # when the script makes no snapshots (it logs to W&B or MLflow only): then as it is found.
        live = trial.trial_dir.path / CHECKPOINT_FOLDER
        without_snapshots = trial.snapshot is None and (captured or final is not None)
        if without_snapshots or (final is not None and final.state is TrialState.FINISHED):
            now = signature(live)
            if now and now != trial.signature:
                publish(live, location, base=trial.base)
                trial.signature = now


def _remove_all_but_marked(folder: Path, trial_dir: TrialDir) -> None:
    """``folder`` gone, but for the files the script marked with ``run.log_artifact``: the trackers
    upload those from a thread of their own, later (or once they are reachable again)."""
    root = folder.resolve()
    keep = {p.resolve() for p in trial_dir.marked_artifacts()}
    keep = {p for p in keep if root in p.parents}
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
        return
    kept = keep | {folder for k in keep for folder in k.parents}  # and the folders holding them
    for path in sorted(root.rglob("*"), reverse=True):  # files before the folders holding them
        if path in kept:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
