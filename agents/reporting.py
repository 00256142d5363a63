"""Forwarding one trial's metrics and heartbeats to the coordinator.

Points stay queued until a report that carried them succeeds, so an unreachable coordinator
delays them but never loses them; a retried batch carries the same seqs, which the store
counts once. With a :class:`~sweeper.agents.spool.Spool` the queue is on disk, so an agent
crash does not lose them either.

Retry policy (every coordinator call a trial's reporting makes): exponential backoff from the report
interval, doubled per consecutive failure, capped at ``max_backoff`` and at a third of the
lease, with jitter so agents cut off together do not all come back in the same instant.

How points go out in batches, and what becomes of points the coordinator refuses:
:mod:`~sweeper.agents.batches`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sweeper.agents.batches import BatchSender, MemoryQueue, PointQueue

from sweeper.protocol import (
    Assignment,
    CoordinatorClient,
    Directive,
    LeaseLostError,
    TrialNotFoundError,
    TrialOutcome,
)
from sweeper.trials import MetricPoint

if TYPE_CHECKING:
    from sweeper.agents.spool import Spool

log = logging.getLogger(__name__)

_UNKNOWN_TRIAL_HINT = (
    " (a coordinator that does not know this trial: was it restarted on another store, or without its --db?)"
)
_jitter = random.Random()  # its own generator: never the global one, never seeded from the sweep


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures: between half and all of
    ``min(base * 2**(failures-1), cap)``."""
    # The exponent is capped too: after a thousand failures 2**n no longer fits in a float.
    ceiling = min(base * 2 ** min(max(failures - 1, 0), 62), cap)
    return ceiling * (0.5 + 0.5 * (rng or _jitter).random())


class TrialReporter:
    """Queues a trial's points and sends what is due on each :meth:`pump`.

    :meth:`add` may be called from another thread than :meth:`pump` (function mode).
    """

    def __init__(
        self,
        client: CoordinatorClient,
        assignment: Assignment,
        *,
        clock: Callable[[], float],
        report_interval: float,
        heartbeat_interval: float,
        max_backoff: float = 30.0,
        max_batch: int = 1000,
        queue: PointQueue | None = None,
    ) -> None:
        self._client = client
        self._assignment = assignment
        self._clock = clock
        self._report_interval = report_interval
        # Renew well before the lease runs out, whatever interval was asked for.
        lease = assignment.lease_seconds
        self._heartbeat_interval = min(heartbeat_interval, lease / 3) if lease > 0 else heartbeat_interval
        self._base_backoff = max(report_interval, 0.1)
        # A restarted coordinator gives running trials one lease period: an agent that waited
        # longer between tries would come back to find its trial lost and its result refused.
        self._max_backoff = min(max_backoff, max(lease / 3, self._base_backoff)) if lease > 0 else max_backoff
        self._sender = BatchSender(
            client, assignment.trial_id, assignment.lease_id, f"trial {assignment.trial_number}", max_batch
        )
        self._queue: PointQueue = queue if queue is not None else MemoryQueue()
        self._lock = threading.Lock()
        now = clock()
        self._last_report = -math.inf
        self._last_contact = now
        self._retry_at: float | None = None
        self._failures = 0
        self._failure_kind: type[BaseException] | None = None  # of the last failed call
        self._said_interrupted = False
        self.summary: dict[str, float] = {}
        self._summary_at: dict[str, tuple[int, int]] = {}

    def add(self, points: Iterable[MetricPoint]) -> None:
        points = list(points)
        if not points:
            return
        with self._lock:
            self._queue.append(points)  # on disk first, when the queue is a spool
            for point in points:
                # The value at the highest (step, seq), as the store keeps it: a script that logs
                # steps out of order (MLflow allows it) shows the value the trial records.
                at = (point.step, point.seq)
                if at >= self._summary_at.get(point.name, at):
                    self.summary[point.name] = point.value
                    self._summary_at[point.name] = at

    @property
    def pending(self) -> int:
        return self._queue.pending

    @property
    def queue(self) -> PointQueue:
        return self._queue

    def pump(self, interrupted: str | None = None) -> Directive | None:
        """Send the queued points if a report is due, else a heartbeat if one is due; first, once,
        a heartbeat that says the agent is ending the trial because it was ``interrupted``.

        Returns the coordinator's directive, or None when nothing was sent or the call failed.
        Raises :class:`LeaseLostError`; any other error is logged and retried after a backoff.
        """
        now = self._clock()
        if self._retry_at is not None and now < self._retry_at:
            return None
        if interrupted is not None and not self._said_interrupted:
            return self._heartbeat(interrupted)
        if self.pending and now - self._last_report >= self._report_interval:
            self._last_report = now
            try:
                return self._sender.send(self._queue, on_sent=self._succeeded, stop_early=True)
            except LeaseLostError:
                raise
            except Exception as exc:  # unreachable, failing, or refusing this batch: keep the trial going
                self.record_failure(exc)
        # A report that keeps failing must not starve the heartbeat, or the lease runs out.
        if now - self._last_contact >= self._heartbeat_interval:
            return self._heartbeat()
        return None

    def _heartbeat(self, interrupted: str | None = None) -> Directive | None:
        trial_id, lease_id = self._assignment.trial_id, self._assignment.lease_id
        try:
            directive = self._client.heartbeat(trial_id, lease_id, interrupted=interrupted)
        except LeaseLostError:
            raise
        except Exception as exc:
            if interrupted is not None and 400 <= getattr(exc, "status", 0) < 500:
                # A server from before interruption notes refuses the field: heartbeat as it knows.
                log.warning(
                    "trial %s: the coordinator takes no note of the interruption (%s); should this "
                    "agent be killed before the trial ends, the trial counts as an attempt",
                    self._assignment.trial_number,
                    exc,
                )
                self._said_interrupted = True
                return self._heartbeat()
            self.record_failure(exc)
            return None
        self._said_interrupted = self._said_interrupted or interrupted is not None
        self._succeeded()
        return directive

    def send_all(self) -> Directive:
        """Send every queued point now, in batches; raises whatever the client raises, except for
        points the coordinator refuses as invalid, which are left out."""
        return self._sender.send(self._queue, on_sent=self._succeeded)

    def record_failure(self, exc: BaseException) -> float:
        """Note a failed call; returns the seconds to wait before the next try."""
        self._failures += 1
        delay = backoff_delay(self._failures, base=self._base_backoff, cap=self._max_backoff)
        self._retry_at = self._clock() + delay
        # One line per outage, and one more whenever the failure changes (a refused connection,
        # then a coordinator that answers but does not know the trial): the rest at debug level.
        kind, self._failure_kind = self._failure_kind, type(exc)
        level = logging.WARNING if self._failures == 1 or kind is not type(exc) else logging.DEBUG
        hint = _UNKNOWN_TRIAL_HINT if isinstance(exc, TrialNotFoundError) else ""
        log.log(
            level,
            # (The points logged from now on wait too: a count taken now would say 0 at an outage's start.)
            "trial %s: coordinator call failed (%s: %s)%s; its points wait meanwhile, retrying in %.1fs",
            self._assignment.trial_number,
            type(exc).__name__,
            exc,
            hint,
            delay,
        )
        return delay

    def _succeeded(self) -> None:
        if self._failures:
            log.info("trial %s: coordinator reachable again", self._assignment.trial_number)
        self._failures = 0
        self._retry_at = None
        self._last_contact = self._clock()


def deliver_leftovers(client: CoordinatorClient, workdir: Path, sweep_id: str | None = None) -> int:
    """Send what earlier agents in ``workdir`` left undelivered (points, then a kept end state).

    Safe while other agents run in the same folder: the spools of agents still running on this
    machine are theirs (:attr:`Spool.in_use`), points are idempotent, and a spool whose trial has
    no kept end state is only drained, never finished. Returns the trials whose reports were
    completed. Raises OSError while the coordinator is unreachable.
    """
    from sweeper.agents.spool import leftover_spools

    completed = 0
    for spool in leftover_spools(workdir, sweep_id):
        outcome = spool.kept_outcome()
        trial = _named(spool)
        try:
            try:
                BatchSender(client, spool.trial_id, spool.lease_id, trial, 1000).send(spool)
            except LeaseLostError:
                if outcome is None or not outcome.interrupted:
                    raise  # else its points count no more, and that it was interrupted still does
            if outcome is not None:
                client.finish_trial(spool.trial_id, spool.lease_id, outcome)
                spool.delivered()
                completed += 1
                log.warning(
                    "%s: delivered its end (%s), which an earlier agent here left", trial, outcome.state.value
                )
        except LeaseLostError as exc:
            spool.abandon(f"lease lost: {exc}")
            _say_abandoned(
                trial,
                outcome,
                spool,
                "its lease had ended before they were sent: the coordinator counted it lost (and runs "
                "its configuration again as the sweep's retry rule says), or had its end already",
            )
        except OSError:
            raise  # unreachable: try again later, keep everything
        except Exception as exc:  # the coordinator refuses these reports (trial gone or ended)
            spool.abandon(f"{type(exc).__name__}: {exc}")
            _say_abandoned(
                trial, outcome, spool, f"the coordinator refuses them ({type(exc).__name__}: {exc})"
            )
    return completed


def _named(spool: Spool) -> str:
    """A spool's trial as people know it: its number (its folder's name) and its sweep."""
    return f"trial {spool.folder.name} of sweep {spool.sweep_id or spool.folder.parent.name}"


def _say_abandoned(trial: str, outcome: TrialOutcome | None, spool: Spool, why: str) -> None:
    """Reports an earlier agent left here that will never count: said once (the spool is marked)."""
    ended = f", {outcome.state.value} under an earlier agent here" if outcome is not None else ""
    log.warning(
        "%s%s: its reports are not taken, as %s; what it wrote is kept in %s",
        trial,
        ended,
        why,
        spool.folder,
    )
