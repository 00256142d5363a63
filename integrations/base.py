"""The tracker-adapter interface and the layer that keeps a failing tracker away from the trials.

An adapter (MLflow, W&B) implements :class:`Tracker`. Nothing calls it directly: each adapter sits
behind a :class:`SafeTracker`, which runs its calls in order on a background thread, retries a
call that failed for a passing reason (server down, timeout) with a capped backoff, keeps at most
``max_pending`` calls waiting, and says once, loudly, what is wrong and what to do. A trial never
waits on a tracker beyond ``start_timeout`` at its start, and never fails because of one.

Standard library only: adapters import their tracker's package themselves, when they are built.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.trials import MetricPoint, TrialState

log = logging.getLogger("sweeper.integrations")
_DOWN_POLL = 0.05  # seconds between looks at whether the tracker went down, while a trial's start waits
_QUIET_CLOSE = 2.0  # seconds a close may take before it says what a tracker that is down holds
_SLOW_CLOSE = 8.0  # and the seconds more an answering one may take


@dataclass(frozen=True)
class SweepInfo:
    sweep_id: str
    method: str
    spec: Mapping[str, Any]  # the sweep file as given
    name: str | None = None
    metric_name: str | None = None
    goal: str = "minimize"


@dataclass(frozen=True)
class TrialInfo:
    sweep_id: str
    trial_id: int
    trial_number: int
    config: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)  # host, agent, gpu ...
    trial_dir: Path | None = None


@dataclass(frozen=True)
class TrialEnd:
    state: TrialState
    exit_code: int | None = None
    stop_reason: str | None = None
    logs: tuple[Path, ...] = ()  # stdout/stderr files to attach
    artifacts: tuple[Path, ...] = ()  # files the script marked with run.log_artifact
    summary: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaderRow:
    """One ended trial, as the sweep-level record shows it."""

    number: int
    state: str
    value: float | None  # the sweep metric's final value
    config: Mapping[str, Any]
    ended_at: float | None = None


@dataclass(frozen=True)
class Leaderboard:
    sweep_id: str
    metric_name: str | None
    goal: str
    rows: tuple[LeaderRow, ...]  # in the order the trials ended

    def ranked(self) -> list[LeaderRow]:
        """Results best first, then the rest (failed and lost trials, NaN and infinities) as they ended."""
        sign = 1.0 if self.goal == "minimize" else -1.0
        scored = [r for r in self.rows if _a_result(r)]
        rest = [r for r in self.rows if r not in scored]
        return sorted(scored, key=lambda r: sign * r.value) + rest  # type: ignore[operator]

    def best_so_far(self) -> list[tuple[int, float]]:
        """(trial number, best value among the trials ended until then), in end order; NaN and
        infinities are never the best (a loss of -inf is a diverged run), nor a failed or lost
        trial's last value."""
        sign = 1.0 if self.goal == "minimize" else -1.0
        best: float | None = None
        out = []
        for row in self.rows:
            if _a_result(row):
                if best is None or sign * row.value < sign * best:
                    best = row.value
            if best is not None:
                out.append((row.number, best))
        return out


def _a_result(row: LeaderRow) -> bool:
    """A value that is the trial's result: finite, of a trial that finished or was stopped early
    (a failed or lost trial's configuration runs again)."""
    return TrialState(row.state).gives_a_result and row.value is not None and math.isfinite(row.value)


class Tracker:
    """What an adapter implements. Every method may raise; :class:`SafeTracker` deals with it.

    ``trial_started`` returns environment variables the trial's process should get (for a script
    that logs to the tracker itself). Metrics with ``source`` equal to :attr:`name` were logged by
    the script to this tracker already and must not be logged again.
    """

    name = "tracker"
    #: One line telling a person what to check when calls fail.
    help = "check the tracker's settings"

    def sweep_started(self, sweep: SweepInfo) -> None: ...

    def leaderboard(self, board: Leaderboard) -> None: ...

    def sweep_ended(self, sweep_id: str, state: str) -> None: ...

    def trial_started(self, trial: TrialInfo) -> Mapping[str, str]:
        return {}

    def trial_metrics(self, trial: TrialInfo, points: Sequence[MetricPoint], source: str) -> None: ...

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None: ...

    def is_transient(self, exc: BaseException) -> bool:
        """True when a retry may succeed (network, server down); False drops the call."""
        return isinstance(exc, OSError | TimeoutError)

    def close(self) -> None: ...


@dataclass
class _Call:
    label: str
    fn: Callable[[], Any]
    key: str | None = None  # calls with the same key replace each other while waiting
    future: Future[Any] = field(default_factory=Future)


class SafeTracker:
    """Runs one adapter's calls in order on a daemon thread, with retries, a bound and loud errors."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        max_pending: int = 10_000,
        start_timeout: float = 30.0,
        base_backoff: float = 0.5,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.name = tracker.name
        self.max_pending = max_pending
        self.start_timeout = start_timeout
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._down_since: float | None = None
        self.failures = 0  # calls that failed, for tests and status lines
        self.dropped = 0
        self._idle = True
        self._thread = threading.Thread(target=self._work, name=f"sweeper-{self.name}", daemon=True)
        self._thread.start()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    # -- the calls -----------------------------------------------------------------------------

    def sweep_started(self, sweep: SweepInfo) -> None:
        self._submit("sweep started", lambda: self.tracker.sweep_started(sweep))

    def leaderboard(self, board: Leaderboard) -> None:
        # Only the newest board matters: while the tracker is away, older ones are replaced.
        self._submit("leaderboard", lambda: self.tracker.leaderboard(board), key=f"board:{board.sweep_id}")

    def sweep_ended(self, sweep_id: str, state: str) -> None:
        self._submit("sweep ended", lambda: self.tracker.sweep_ended(sweep_id, state))

    def trial_started(self, trial: TrialInfo) -> Mapping[str, str]:
        """The tracker's env for the trial: :meth:`start_trial`, then :meth:`env_of` it."""
        return self.env_of(self.start_trial(trial), time.monotonic() + self.start_timeout)

    def start_trial(self, trial: TrialInfo) -> Future[Any]:
        """Queue the trial's start; the future holds the env the tracker returns for it."""
        label = f"trial {trial.trial_number} started"
        return self._submit(label, lambda: self.tracker.trial_started(trial)).future

    def env_of(
        self, started: Future[Any], deadline: float, stopping: threading.Event | None = None
    ) -> Mapping[str, str]:
        """The env of a start (the run the script logs into): waited for while the tracker answers,
        however slowly, until ``deadline`` (``time.monotonic()``: a real wait, whatever the clock
        given); not at all once it is down, nor once ``stopping`` is set (the trial will not run).
        Without it, {}: the trial runs without the variables."""
        while True:
            if started.done():
                try:
                    return dict(started.result() or {})
                except Exception:  # refused, or cancelled by close()
                    return {}
            left = deadline - time.monotonic()
            if self.down or left <= 0 or (stopping is not None and stopping.is_set()):
                return {}
            # In short waits: a call of the queue that fails marks the tracker down meanwhile.
            futures.wait([started], timeout=min(left, _DOWN_POLL))

    def trial_metrics(self, trial: TrialInfo, points: Sequence[MetricPoint], source: str) -> None:
        if points:
            label = f"trial {trial.trial_number} metrics"
            self._submit(label, lambda: self.tracker.trial_metrics(trial, points, source))

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        self._submit(f"trial {trial.trial_number} ended", lambda: self.tracker.trial_ended(trial, end))

    # -- queue and worker ----------------------------------------------------------------------

    def _submit(self, label: str, fn: Callable[[], Any], key: str | None = None) -> _Call:
        call = _Call(label, fn, key)
        with self._cond:
            if self._closing:
                call.future.cancel()
                return call
            if key is not None:
                for i, waiting in enumerate(self._queue):
                    if waiting.key == key and i > 0:  # the head may be running: leave it
                        waiting.future.cancel()
                        del self._queue[i]
                        break
            if len(self._queue) >= self.max_pending:
                self._drop_one()
            self._queue.append(call)
            self._idle = False
            self._cond.notify_all()
        return call

    def _drop_one(self) -> None:
        # Metric batches go first: starts, ends and sweep records are worth more than a curve's middle.
        for i, waiting in enumerate(self._queue):
            if i > 0 and waiting.label.endswith("metrics"):
                del self._queue[i]
                break
        else:
            self._queue.popleft()
        self.dropped += 1
        if self.dropped == 1:
            log.error(
                "%s: more than %d calls waiting for the tracker; dropping the oldest metric batches",
                self.name,
                self.max_pending,
            )

    def _work(self) -> None:
        # In a process that also runs trials as functions, what this thread logs is the tracker's.
        # Imported here: the capture's package is the whole agent, which a server never needs.
        from sweeper.agents.pythonpath._sweeper_capture import not_followed_here

        not_followed_here()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                if not self._queue:
                    self._idle = True
                    self._cond.notify_all()
                    return
                call = self._queue[0]
            delay = self._run(call)
            with self._cond:
                if delay is None:
                    if self._queue and self._queue[0] is call:
                        self._queue.popleft()
                    continue
                if self._closing and self._deadline is not None and self._clock() + delay > self._deadline:
                    self._give_up()
                    return
                self._cond.wait(delay)

    def _run(self, call: _Call) -> float | None:
        """Run one call; None when done with it, else seconds to wait before retrying it."""
        try:
            result = call.fn()
        except Exception as exc:
            self.failures += 1
            if not self.tracker.is_transient(exc):
                log.error(
                    "%s: %s was refused and is skipped (%s: %s); %s",
                    self.name,
                    call.label,
                    type(exc).__name__,
                    exc,
                    self.tracker.help,
                )
                call.future.set_exception(exc)
                return None
            if self._down_since is None:
                self._down_since = self._clock()
                self._attempts = 0
                log.error(
                    "%s is unreachable (%s: %s). Trials go on; their records are kept (up to %d calls) "
                    "and sent when it is back. %s",
                    self.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                    self.max_pending,
                    self.tracker.help,
                )
            self._attempts += 1
            return min(self.base_backoff * 2 ** (self._attempts - 1), self.max_backoff)
        if self._down_since is not None:
            log.warning(
                "%s is reachable again after %.0fs; sending %d waiting call(s)",
                self.name,
                self._clock() - self._down_since,
                len(self._queue),
            )
            self._down_since = None
        if not call.future.done():
            call.future.set_result(result)
        return None

    _deadline: float | None = None
    _attempts = 0

    def _give_up(self) -> None:
        left = len(self._queue)
        self._queue.clear()
        log.error(
            "%s: gave up on %d call(s) at exit: the tracker stayed unreachable. %s",
            self.name,
            left,
            self.tracker.help,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued call is done; False if the time ran out."""
        end = self._clock() + timeout
        with self._cond:
            while not (self._idle and not self._queue):
                left = end - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Send what is waiting (for at most ``timeout`` seconds), then close the adapter. A wait
        longer than a moment is said, so that a command ending does not look hung."""
        deadline = self._clock() + timeout
        quiet = self.flush(min(timeout, _QUIET_CLOSE))
        if not quiet and not self.down:  # answering, slowly: W&B finishing its runs takes seconds
            quiet = self.flush(min(_SLOW_CLOSE, max(deadline - self._clock(), 0.0)))
        if not quiet:
            with self._cond:
                waiting = len(self._queue)
            log.warning(
                "%s: %d call(s) not sent yet (%s); trying for up to %.0fs more before closing",
                self.name,
                waiting,
                "it is unreachable" if self.down else "it is slow to answer",
                max(deadline - self._clock(), 0.0),
            )
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()
        self._thread.join(max(deadline - self._clock(), 0.0) + 1.0)
        if self._thread.is_alive():
            log.error("%s: %d call(s) not sent at exit; %s", self.name, len(self._queue), self.tracker.help)
        try:
            self.tracker.close()
        except Exception as exc:
            log.error("%s: closing failed (%s: %s)", self.name, type(exc).__name__, exc)
