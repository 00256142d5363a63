"""The layer that keeps a failing or slow tracker away from the trials.

Nothing calls an adapter directly: each sits behind a :class:`SafeTracker`, which runs its calls on
background threads, retries a call that failed for a passing reason (server down, timeout) with a
capped backoff, keeps at most ``max_pending`` calls waiting, and says once, loudly, what is wrong
and what to do. A trial never waits on a tracker beyond ``start_timeout`` at its start, and never
fails because of one.

The calls run in two lanes, each in order on a thread of its own: trials' starts in one, the rest
in the other. A trial's start so never waits behind another trial's end, whose upload of logs and
checkpoints can take minutes while the next trial's GPU stands idle. Each trial's calls still run
in order, as does each sweep's: a trial's metrics and end wait for its start, and a start waits for
its sweep's record (the parent run it is nested in).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sweeper.integrations.base import Leaderboard, SweepInfo, Tracker, TrialEnd, TrialInfo

from sweeper.trials import MetricPoint

log = logging.getLogger("sweeper.integrations")
_DOWN_POLL = 0.05  # seconds between looks at whether the tracker went down, while a trial's start waits
_QUIET_CLOSE = 2.0  # seconds a close may take before it says what a tracker that is down holds
_SLOW_CLOSE = 8.0  # and the seconds more an answering one may take
_AFTER_POLL = 0.2  # seconds between looks at the close's deadline, while a call waits for the other lane


@dataclass
class _Call:
    label: str
    fn: Callable[[], Any]
    key: str | None = None  # calls with the same key replace each other while waiting
    after: Future[Any] | None = None  # a call of the other lane that must be done first
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _Lane:
    """Calls run in order by one thread; the head is the call running or being retried."""

    name: str
    queue: deque[_Call] = field(default_factory=deque)  # the head leaves once done with: empty is idle
    attempts: int = 0  # failed tries of the head, for its backoff
    down_since: float | None = None  # when the head's first try of the current run of failures failed
    waiting: bool = False  # the head waits for a call of the other lane
    refused: str | None = None  # the head's last failure was a refusal: what to do about it


class SafeTracker:
    """Runs one adapter's calls in two ordered lanes, with retries, a bound and loud errors."""

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
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self.failures = 0  # calls that failed, for tests and status lines
        self.dropped = 0
        self._calls = _Lane("calls")
        self._starts = _Lane("starts")
        # What later calls wait for: each trial's start, until its end is queued; each sweep's record.
        self._trial_starts: dict[int, Future[Any]] = {}
        self._sweep_records: dict[str, Future[Any]] = {}
        self._threads = [
            threading.Thread(
                target=self._work, args=(lane,), name=f"sweeper-{self.name}-{lane.name}", daemon=True
            )
            for lane in (self._calls, self._starts)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def down(self) -> bool:
        """A lane's call failed for a passing reason and waits for its retry."""
        return self._calls.down_since is not None or self._starts.down_since is not None

    def _starts_held_up(self) -> bool:
        """The starts are failing, or wait for a call of the other lane, which is failing. (The
        other lane failing alone, an upload timing out say, holds up no start.)"""
        starts, calls = self._starts, self._calls
        return starts.down_since is not None or (starts.waiting and calls.down_since is not None)

    # -- the calls -----------------------------------------------------------------------------

    def sweep_started(self, sweep: SweepInfo) -> None:
        call = self._submit("sweep started", lambda: self.tracker.sweep_started(sweep))
        self._sweep_records[sweep.sweep_id] = call.future

    def leaderboard(self, board: Leaderboard) -> None:
        # Only the newest board matters: while the tracker is away, older ones are replaced.
        self._submit("leaderboard", lambda: self.tracker.leaderboard(board), key=f"board:{board.sweep_id}")

    def sweep_ended(self, sweep_id: str, state: str) -> None:
        self._sweep_records.pop(sweep_id, None)  # the sweep's last call: no start waits for it any more
        self._submit("sweep ended", lambda: self.tracker.sweep_ended(sweep_id, state))

    def trial_started(self, trial: TrialInfo) -> Mapping[str, str]:
        """The tracker's env for the trial: :meth:`start_trial`, then :meth:`env_of` it."""
        return self.env_of(self.start_trial(trial), time.monotonic() + self.start_timeout)

    def start_trial(self, trial: TrialInfo) -> Future[Any]:
        """Queue the trial's start; the future holds the env the tracker returns for it."""
        call = self._submit(
            f"trial {trial.trial_number} started",
            lambda: self.tracker.trial_started(trial),
            lane=self._starts,
            after=self._sweep_records.get(trial.sweep_id),
        )
        self._trial_starts[trial.trial_id] = call.future
        return call.future

    def env_of(
        self, started: Future[Any], deadline: float, stopping: threading.Event | None = None
    ) -> Mapping[str, str]:
        """The env of a start (the run the script logs into): waited for while the tracker answers,
        however slowly, until ``deadline`` (``time.monotonic()``: a real wait, whatever the clock
        given); not at all once the starts are held up by a tracker that is down, nor once
        ``stopping`` is set (the trial will not run).
        Without it, the tracker's :attr:`~Tracker.always_env` only: the trial runs without its run."""
        always = dict(self.tracker.always_env)
        while True:
            if started.done():
                try:
                    return dict(started.result() or {})  # the whole of it (always_env is for its lack)
                except Exception:  # refused, or cancelled by close()
                    return always
            left = deadline - time.monotonic()
            if self._starts_held_up() or left <= 0 or (stopping is not None and stopping.is_set()):
                return always
            # In short waits: a call that fails marks the tracker down meanwhile.
            futures.wait([started], timeout=min(left, _DOWN_POLL))

    def trial_metrics(self, trial: TrialInfo, points: Sequence[MetricPoint], source: str) -> None:
        if points:
            label = f"trial {trial.trial_number} metrics"
            after = self._trial_starts.get(trial.trial_id)
            self._submit(label, lambda: self.tracker.trial_metrics(trial, points, source), after=after)

    def trial_ended(self, trial: TrialInfo, end: TrialEnd) -> None:
        after = self._trial_starts.pop(trial.trial_id, None)  # the trial's last call
        self._submit(
            f"trial {trial.trial_number} ended", lambda: self.tracker.trial_ended(trial, end), after=after
        )

    # -- lanes ---------------------------------------------------------------------------------

    def _submit(
        self,
        label: str,
        fn: Callable[[], Any],
        key: str | None = None,
        *,
        lane: _Lane | None = None,
        after: Future[Any] | None = None,
    ) -> _Call:
        lane = lane or self._calls
        call = _Call(label, fn, key, after if after is not None and not after.done() else None)
        with self._cond:
            if self._closing:
                call.future.cancel()
                return call
            if key is not None:
                for i, waiting in enumerate(lane.queue):
                    if waiting.key == key and i > 0:  # the head may be running: leave it
                        waiting.future.cancel()
                        del lane.queue[i]
                        break
            if self._pending() >= self.max_pending:
                self._drop_one()
            lane.queue.append(call)
            self._cond.notify_all()
        return call

    def _pending(self) -> int:
        return len(self._calls.queue) + len(self._starts.queue)

    def _drop_one(self) -> None:
        """Drop a waiting call: a metric batch, as starts, ends and sweep records are worth more than
        a curve's middle; else the first waiting call of the calls lane, then of the starts lane.
        Never a lane's head, which may be running."""
        behind = [(lane, call) for lane in (self._calls, self._starts) for call in list(lane.queue)[1:]]
        metrics = ((lane, call) for lane, call in behind if call.label.endswith("metrics"))
        chosen = next(metrics, None) or (behind[0] if behind else None)
        if chosen is None:
            return  # only the lanes' heads wait: the bound is passed by them
        lane, dropped = chosen
        lane.queue.remove(dropped)
        dropped.future.cancel()  # a call waiting for it goes on without it
        self.dropped += 1
        if self.dropped == 1:
            log.error(
                "%s: more than %d calls waiting for the tracker; dropping the oldest metric batches",
                self.name,
                self.max_pending,
            )

    def _work(self, lane: _Lane) -> None:
        # In a process that also runs trials as functions, what this thread logs is the tracker's.
        # Imported here: the capture's package is the whole agent, which a server never needs.
        from sweeper.agents.pythonpath._sweeper_capture import not_followed_here

        not_followed_here()
        while True:
            with self._cond:
                while not lane.queue and not self._closing:
                    self._cond.wait()  # woken by a call queued, or the close (never by the other lane idling)
                if not lane.queue:
                    self._cond.notify_all()
                    return
                call = lane.queue[0]
            if call.after is not None and not self._waited_for(call.after, lane):
                with self._cond:
                    self._give_up(lane)
                return
            delay = self._run(call, lane)
            with self._cond:
                if delay is None:
                    if lane.queue and lane.queue[0] is call:
                        lane.queue.popleft()
                        self._cond.notify_all()  # for flush
                    continue
                if self._closing and self._deadline is not None and self._clock() + delay > self._deadline:
                    self._give_up(lane)
                    return
                # The whole backoff: the other lane's calls notify as they end; the close cuts it short.
                retry_at = time.monotonic() + delay
                while not self._closing and (left := retry_at - time.monotonic()) > 0:
                    self._cond.wait(left)

    def _waited_for(self, after: Future[Any], lane: _Lane) -> bool:
        """Wait until the other lane's call is done (run, refused or dropped); False once the close's
        deadline has passed first."""
        lane.waiting = True
        try:
            while not after.done():
                if self._closing and self._deadline is not None and self._clock() > self._deadline:
                    return False
                futures.wait([after], timeout=_AFTER_POLL)
            return True
        finally:
            lane.waiting = False

    def _run(self, call: _Call, lane: _Lane) -> float | None:
        """Run one call; None when done with it, else seconds to wait before retrying it."""
        try:
            result = call.fn()
        except Exception as exc:
            with self._cond:
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
                lane.attempts = 0
                return None
            with self._cond:  # both lanes may find it down: it is said once
                went_down = not self.down
                if lane.down_since is None:
                    lane.down_since = self._clock()
            refused = lane.refused = self.tracker.refusal(exc)
            if went_down and refused is not None:  # retried all the same: it may be fixed meanwhile
                log.error(
                    "%s refused a call: %s. Trials go on; their records are kept (up to %d calls) "
                    "and sent once it takes them.",
                    self.name,
                    refused,
                    self.max_pending,
                )
            elif went_down:
                log.error(
                    "%s is unreachable (%s). Trials go on; their records are kept (up to %d calls) "
                    "and sent when it is back. %s",
                    self.name,
                    self.tracker.failure(exc),
                    self.max_pending,
                    self.tracker.help,
                )
            lane.attempts += 1
            return min(self.base_backoff * 2 ** (lane.attempts - 1), self.max_backoff)
        lane.attempts, lane.refused = 0, None
        with self._cond:
            down_since, lane.down_since = lane.down_since, None
            back = down_since is not None and not self.down  # said once the last lane is through
            waiting = self._pending() - 1  # the head is sent
        if back and down_since is not None:
            log.warning(
                "%s is reachable again after %.0fs; sending %d waiting call(s)",
                self.name,
                self._clock() - down_since,
                waiting,
            )
        if not call.future.done():
            call.future.set_result(result)
        return None

    def _give_up(self, lane: _Lane) -> None:
        left = len(lane.queue)
        for waiting in lane.queue:
            waiting.future.cancel()  # nothing waits for them any more: calls of the other lane neither
        lane.queue.clear()
        if left and lane.refused:
            log.error("%s: gave up on %d call(s) at exit: %s", self.name, left, lane.refused)
        elif left:
            why = "the tracker stayed unreachable" if self.down else "it was still busy with earlier calls"
            log.error("%s: gave up on %d call(s) at exit: %s. %s", self.name, left, why, self.tracker.help)

    # -- flush and close -----------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued call is done; False if the time ran out."""
        end = self._clock() + timeout
        with self._cond:
            while self._pending():
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
                waiting = self._pending()
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
        for thread in self._threads:
            thread.join(max(deadline - self._clock(), 0.0) + 1.0)
        if any(thread.is_alive() for thread in self._threads):
            log.error("%s: %d call(s) not sent at exit; %s", self.name, self._pending(), self.tracker.help)
        try:
            self.tracker.close()
        except Exception as exc:
            log.error("%s: closing failed (%s: %s)", self.name, type(exc).__name__, exc)
