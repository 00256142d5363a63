"""W&B adapter: one run per trial, grouped by sweep, and one sweep-level run with the leaderboard.

A trial run has the trial's config, its whole history at the logged steps, its summary, the
trial's logs and marked files as an artifact, ``group`` = sweep id, ``job_type`` = ``trial`` and
the tags ``sweeper``, ``sweep-<id>`` and the final state. A script that calls ``wandb.init`` itself
keeps its own run instead (same id, and the same group, job type and tags through W&B's variables);
the adapter then adds no second run. Works online and offline (``mode: offline``, ``wandb sync``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeper.integrations.base import GOING_ON, Leaderboard, SweepInfo, Tracker, TrialEnd, TrialInfo
from sweeper.integrations.leaderboard import board_rows, plot_best_so_far
from sweeper.integrations.settings import WandbSettings, wandb_settings
from sweeper.integrations.wandb_progress import SweepRunProgress, progress_path

from sweeper._context import run_id_for
from sweeper.trials import MetricPoint, TrialState

log = logging.getLogger("sweeper.integrations")

EXIT_CODES = {TrialState.FINISHED: 0, TrialState.FAILED: 1, TrialState.STOPPED: 143, TrialState.LOST: 137}
#: Written in the trial folder by the capture when the script calls ``wandb.init`` itself.
SCRIPT_RUN_MARKER = "wandb-run.json"


class WandbTracker(Tracker):
    name = "W&B"

    def __init__(self, settings: WandbSettings) -> None:
        import wandb  # noqa: F401  (fails early, with an ImportError the session reports)

        self.settings = settings
        # Where the runs go, fixed now: wandb would keep the folder of the first sweep of the process.
        self.dir = settings.dir or os.getcwd()
        where = f"project {settings.project}" + (f" of {settings.entity}" if settings.entity else "")
        self.help = (
            f"check `wandb login` (or WANDB_API_KEY) and access to {where}; or log offline with "
            "WANDB_MODE=offline (or integrations.wandb.mode: offline) and `wandb sync` later"
        )
        self._runs: dict[int, Any] = {}
        self._sweeps: dict[str, Any] = {}
        self._board_progress: dict[str, SweepRunProgress] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> WandbTracker:
        return cls(wandb_settings(block))

    def is_transient(self, exc: BaseException) -> bool:
        return not isinstance(exc, TypeError | ValueError | KeyError)

    def _init(self, **kwargs: Any) -> Any:
        from sweeper.agents.pythonpath._sweeper_capture.wandb_runs import init_lock

        import wandb

        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
        with init_lock:  # not while a function trial's run is opened with wandb set up for it
            return wandb.init(
                project=self.settings.project,
                entity=self.settings.entity,
                mode=self.settings.mode,
                dir=self.dir,
                reinit="create_new",
                settings=settings,
                **kwargs,
            )

    def _tags(self, sweep_id: str, *extra: str) -> list[str]:
        return ["sweeper", f"sweep-{sweep_id}", *self.settings.tags, *extra]

    # -- sweep-level run -----------------------------------------------------------------------

    def _sweep_run(
        self, sweep_id: str, config: Mapping[str, Any] | None = None, name: str | None = None
    ) -> Any:
        run = self._sweeps.get(sweep_id)
        if run is None:
            run = self._init(
                id=f"{sweep_id}-sweep",
                name=name or f"sweep-{sweep_id}",
                group=sweep_id,
                job_type="sweep",
                tags=self._tags(sweep_id),
                config=dict(config or {}),
                resume="allow",
            )
            self._sweeps[sweep_id] = run
        return run

    def sweep_started(self, sweep: SweepInfo) -> None:
        run = self._sweep_run(sweep.sweep_id, {"sweep": dict(sweep.spec), "method": sweep.method}, sweep.name)
        run.summary["sweeper_state"] = "running"  # a stopped sweep taken up again

    def _progress(self, sweep_id: str) -> SweepRunProgress:
        progress = self._board_progress.get(sweep_id)
        if progress is None:  # the first board of this process: carry on from what an earlier one logged
            progress = SweepRunProgress.load(progress_path(self.dir, sweep_id))
            self._board_progress[sweep_id] = progress
        return progress

    def leaderboard(self, board: Leaderboard) -> None:
        import wandb

        run = self._sweep_run(board.sweep_id)
        progress = self._progress(board.sweep_id)
        new_rows = [row for row in board.rows if row.number not in progress.trials]
        if not new_rows:
            return  # the board as already logged: logging it again would repeat history
        # Explicit steps: a run resumed offline starts again at 0, and W&B drops steps that go back.
        step = max(progress.next_step, _next_step(run))
        best = dict(board.best_so_far())
        for row in new_rows:  # one history row per newly ended trial
            values: dict[str, Any] = {"trial": row.number}
            if board.metric_name and row.number in best:
                values[f"best_{board.metric_name}"] = best[row.number]
                if row.value is not None:
                    values[board.metric_name] = row.value
            run.log(values, step=step)
            step += 1
        rows = board_rows(board)
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        table = wandb.Table(columns=list(columns), data=[[row.get(c) for c in columns] for row in rows])
        extra: dict[str, Any] = {"leaderboard": table}
        if run.dir:
            png = plot_best_so_far(board, Path(run.dir) / "best_so_far.png")
            if png is not None:
                extra["best_so_far"] = wandb.Image(os.fspath(png))
        run.log(extra, step=step)
        if board.metric_name and best:
            # The sweep's value is its best trial's (W&B's summary would keep the last one logged).
            run.summary[f"best_{board.metric_name}"] = list(best.values())[-1]
            run.summary[board.metric_name] = list(best.values())[-1]
        progress.trials.update(row.number for row in new_rows)
        progress.next_step = step + 1
        progress.save()

    def sweep_ended(self, sweep_id: str, state: str) -> None:
        run = self._sweep_run(sweep_id)
        run.summary["sweeper_state"] = state
        run.finish(exit_code=0 if state == "finished" or state in GOING_ON else 1)
        self._sweeps.pop(sweep_id, None)
        self._board_progress.pop(sweep_id, None)

    # -- trial runs ----------------------------------------------------------------------------

    def trial_started(self, trial: TrialInfo) -> Mapping[str, str]:
        # For a script that calls wandb.init itself: the same grouping as the adapter's own runs.
        env = {
            "WANDB_PROJECT": self.settings.project,
            "WANDB_RUN_GROUP": trial.sweep_id,
            "WANDB_JOB_TYPE": "trial",
            "WANDB_TAGS": ",".join(self._tags(trial.sweep_id)),
        }
        if self.settings.entity:
            env["WANDB_ENTITY"] = self.settings.entity
        if self.settings.mode:
            env["WANDB_MODE"] = self.settings.mode
        if self.settings.dir:
            env["WANDB_DIR"] = self.settings.dir
        return env

    def _script_has_run(self, trial: TrialInfo) -> bool:
        return trial.trial_dir is not None and (trial.trial_dir / SCRIPT_RUN_MARKER).exists()

    def _trial_run(self, trial: TrialInfo) -> Any:
        run = self._runs.get(trial.trial_id)
        if run is None and not self._script_has_run(trial):
            run = self._init(
                id=run_id_for(trial.sweep_id, trial.trial_number),
                name=f"trial-{trial.trial_number}",
                group=trial.sweep_id,
                job_type="trial",
                tags=self._tags(trial.sweep_id),
                config=dict(trial.config),
            )
            run.summary["sweeper_trial_number"] = trial.trial_number
            for key, value in trial.tags.items():
                run.summary[f"sweeper_{key}"] = value
            self._runs[trial.trial_id] = run
        return run

    def trial_metrics(self, trial: TrialInfo, points: Sequence[MetricPoint], source: str) -> None:
        if source == "wandb":  # the script's own run has them
            return
        run = self._trial_run(trial)
        if run is None:
            return
        by_step: dict[int, dict[str, float]] = {}
        for p in points:
            by_step.setdefault(p.step, {})[p.name] = p.value
        for step in sorted(by_step):
            run.log(by_step[step], step=step)

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        import wandb

        run = self._trial_run(trial)
        if run is None:
            return  # the script's own run is the trial's run
        run.summary["sweeper_state"] = end.state.value
        if end.stop_reason:
            run.summary["sweeper_stop_reason"] = end.stop_reason
        if end.exit_code is not None:
            run.summary["sweeper_exit_code"] = end.exit_code
        run.tags = tuple(run.tags or ()) + (end.state.value,)
        files = [p for p in (*end.logs, *end.artifacts) if p.exists()]
        if files:
            artifact = wandb.Artifact(f"trial-{trial.sweep_id}-{trial.trial_number}", type="trial-files")
            for path in files:
                if path.is_dir():
                    artifact.add_dir(os.fspath(path), name=path.name)
                else:
                    artifact.add_file(os.fspath(path), name=("logs/" if path in end.logs else "") + path.name)
            run.log_artifact(artifact)
        run.finish(exit_code=EXIT_CODES[end.state])
        self._runs.pop(trial.trial_id, None)

    def close(self) -> None:
        for run in [*self._runs.values(), *self._sweeps.values()]:
            try:
                run.finish(exit_code=1)
            except Exception:
                pass


def _next_step(run: Any) -> int:
    """The step W&B would give the next row (online, a resumed run's last step + 1); 0 if unknown."""
    try:
        return int(run.step or 0)
    except Exception:  # a shared run has no step of its own
        return 0
