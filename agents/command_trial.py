"""Running one trial as a subprocess built from the sweep's ``command``: start it, forward the metrics
it writes, stop it when asked, and say how it ended."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

from sweeper.agents.command import expand_command
from sweeper.agents.events import TrialStarted
from sweeper.agents.limits import TrialLimits
from sweeper.agents.logcap import BoundedLogs
from sweeper.agents.metrics import MetricTailer
from sweeper.agents.orphans import forget_process, record_process
from sweeper.agents.process import TrialProcess, describe_exit
from sweeper.agents.stderr import stderr_tail
from sweeper.agents.trialdir import trial_env
from sweeper.agents.trialrun import STDERR_TAIL_LINES, AbandonTrial, LeaseKeeper, TrialRun, start_hooks

from sweeper.protocol import LeaseLostError, TrialOutcome, interrupted_reason
from sweeper.trials import TrialState


class CommandTrial:
    """Runs trials as commands, each in its own process group, the way one agent is set up to."""

    def __init__(
        self,
        *,
        workdir: Path,
        program_override: str | None,
        environ: Mapping[str, str] | None,
        interpreter: str,
        gpu: str | None,
        grace_period: float,
        max_log_bytes: int,
    ) -> None:
        self.workdir = workdir
        self.program_override = program_override
        self.environ = os.environ if environ is None else environ
        self.interpreter = interpreter
        self.gpu = gpu
        self.grace_period = grace_period
        self.max_log_bytes = max_log_bytes

    def run(self, trial: TrialRun) -> TrialOutcome:
        """Run the trial to its end; raises :class:`AbandonTrial` when its lease is lost."""
        try:
            argv = self._argv(trial)
        except (OSError, TypeError, ValueError) as exc:
            return TrialOutcome(TrialState.FAILED, stderr_tail=f"sweeper: cannot build the command: {exc}")
        env, stop_reason = self._environment(trial)
        if stop_reason is not None:  # stopped before it started: nothing ran, nothing to end
            return TrialOutcome(TrialState.STOPPED, stop_reason=stop_reason)
        proc = self._start(trial, argv, env)
        if proc.started:  # so that an agent started after this one dies can end it
            record_process(trial.trial_dir.path, proc.mark)
        tailer = MetricTailer(trial.trial_dir.metrics_path)
        output = (trial.trial_dir.stdout_path, trial.trial_dir.stderr_path)
        logs = BoundedLogs(output, self.max_log_bytes)
        limits = TrialLimits(trial.assignment.time_limit, trial.assignment.stall_limit, output)
        # The watch loop sleeps between looks; the process's end or a stop request wakes it, so
        # the next trial does not wait out the rest of a poll interval.
        woken = threading.Event()
        if proc.started:
            threading.Thread(target=_set_on_exit, args=(proc, woken), name="trial-exit", daemon=True).start()
        try:
            try:
                with trial.stop.waking(woken):
                    stop_reason = self._watch(trial, proc, tailer, logs, limits, woken)
            except Exception:  # a lost lease, or anything else: the trial must not run on unwatched
                proc.kill()
                raise
            if stop_reason is not None and proc.poll() is None:
                return self._stopped(trial, proc, tailer, stop_reason, failed=limits.stalled)
            return self._exited(trial, proc, tailer)
        finally:
            forget_process(trial.trial_dir.path)
            logs.check()  # what it wrote since the last check, before the trackers upload the logs

    def _argv(self, trial: TrialRun) -> list[str]:
        return expand_command(
            trial.assignment.command,
            config=trial.assignment.config,
            program=self.program_override or trial.assignment.program,
            args_json_path=trial.trial_dir.args_json_path,
            interpreter=self.interpreter,
            environ=self.environ,
        )

    def _environment(self, trial: TrialRun) -> tuple[dict[str, str], str | None]:
        """The trial's environment, the hooks' variables included, and why it is not to start, or None."""
        env = trial_env(self.environ, trial.assignment, trial.trial_dir, gpu=self.gpu)
        if trial.assignment.stall_limit is not None:  # a print shows at once, so it counts as a sign of life
            env.setdefault("PYTHONUNBUFFERED", "1")
        extra, stop_reason = start_hooks(trial, env)
        env.update(extra)
        return env, stop_reason

    def _start(self, trial: TrialRun, argv: list[str], env: Mapping[str, str]) -> TrialProcess:
        assignment, trial_dir = trial.assignment, trial.trial_dir
        proc = TrialProcess.start(
            argv,
            env=env,
            cwd=self.workdir,
            stdout_path=trial_dir.stdout_path,
            stderr_path=trial_dir.stderr_path,
        )
        trial.emit(TrialStarted(assignment, tuple(argv), trial_dir.path))
        return proc

    def _watch(
        self,
        trial: TrialRun,
        proc: TrialProcess,
        tailer: MetricTailer,
        logs: BoundedLogs,
        limits: TrialLimits,
        woken: threading.Event,
    ) -> str | None:
        """Forward metrics until the process exits (None) or a stop is asked for (its reason)."""
        while True:
            code = proc.poll()
            records = tailer.read_records()
            trial.forward(records)
            logs.check()
            if code is not None:
                return None
            if trial.stop.requested:
                return trial.stop.reason
            if (reason := limits.check(bool(records))) is not None:
                return reason
            try:
                reason = trial.coordinator_stop()
            except LeaseLostError as exc:  # run() kills the process on the way out
                raise AbandonTrial(f"lease lost: {exc}") from exc
            if reason is not None:
                return reason
            woken.wait(trial.poll_interval)
            woken.clear()  # what set it is seen at the top of the loop

    def _stopped(
        self, trial: TrialRun, proc: TrialProcess, tailer: MetricTailer, reason: str, *, failed: bool
    ) -> TrialOutcome:
        with LeaseKeeper(trial):  # the grace period may outlast the lease
            code = proc.terminate(self.grace_period, trial.stop.hurried)
        trial.forward(tailer.read_records())  # what it logged while shutting down
        if failed:  # hung: a failure, so its configuration runs again
            return TrialOutcome(TrialState.FAILED, exit_code=code, stderr_tail=_tail(trial, reason))
        return TrialOutcome(
            TrialState.STOPPED, exit_code=code, stderr_tail=_tail(trial) or None, stop_reason=reason
        )

    def _exited(self, trial: TrialRun, proc: TrialProcess, tailer: MetricTailer) -> TrialOutcome:
        code = proc.poll()
        assert code is not None
        trial.forward(tailer.read_records())
        if code == 0:
            return TrialOutcome(TrialState.FINISHED, exit_code=0)
        if (lost_folder := _folder_lost(trial.trial_dir.path)) is not None:
            # Not the script's failure (nor an attempt): its configuration runs again.
            return TrialOutcome(TrialState.LOST, exit_code=code, stop_reason=interrupted_reason(lost_folder))
        note = f"the trial process was {describe_exit(code)}" if code < 0 else None
        return TrialOutcome(TrialState.FAILED, exit_code=code, stderr_tail=_tail(trial, note))


_FULL_DISK = 64 * 1024  # bytes free below which a trial that failed is taken to have lacked room


def _folder_lost(folder: Path) -> str | None:
    """Why a trial whose process failed could not have run: its folder (its logs, its metrics
    file, its checkpoints) was removed while it ran, or the disk holding it filled up."""
    if not folder.is_dir():
        return f"its folder {folder} was removed while it ran"
    try:
        disk = os.statvfs(folder)
    except OSError:
        return None
    free = disk.f_bavail * disk.f_frsize
    return f"the disk holding {folder} is full" if free < _FULL_DISK else None


def _set_on_exit(proc: TrialProcess, event: threading.Event) -> None:
    proc.join()
    event.set()


def _tail(trial: TrialRun, note: str | None = None) -> str:
    """The last lines of the trial's stderr, and after them a line of the agent's own, if any."""
    tail = stderr_tail(trial.trial_dir.stderr_path, STDERR_TAIL_LINES)
    return f"{tail}\nsweeper: {note}".lstrip("\n") if note else tail
