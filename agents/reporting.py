"""Forwarding one trial's metrics and heartbeats to the coordinator.

Points stay queued until a report that carried them succeeds, so an unreachable coordinator
delays them but never loses them; a retried batch carries the same seqs, which the store
counts once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable

from sweeper.protocol import CONTINUE, Assignment, CoordinatorClient, Directive, LeaseLostError
from sweeper.trials import MetricPoint

log = logging.getLogger(__name__)


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
    ) -> None:
        self._client = client
        self._assignment = assignment
        self._clock = clock
        self._report_interval = report_interval
        # Renew well before the lease runs out, whatever interval was asked for.
        lease = assignment.lease_seconds
        self._heartbeat_interval = min(heartbeat_interval, lease / 3) if lease > 0 else heartbeat_interval
        self._base_backoff = max(report_interval, 0.1)
        self._max_backoff = max_backoff
        self._max_batch = max_batch
        self._pending: list[MetricPoint] = []
        self._lock = threading.Lock()
        now = clock()
        self._last_report = -math.inf
        self._last_contact = now
        self._retry_at: float | None = None
        self._failures = 0
        self.summary: dict[str, float] = {}
        self.sent = 0

    def add(self, points: Iterable[MetricPoint]) -> None:
        with self._lock:
            for point in points:
                self._pending.append(point)
                self.summary[point.name] = point.value

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def failures(self) -> int:
        """Consecutive failed calls so far."""
        return self._failures

    def pump(self) -> Directive | None:
        """Send the queued points if a report is due, else a heartbeat if one is due.

        Returns the coordinator's directive, or None when nothing was sent or the call failed.
        Raises :class:`LeaseLostError`; any other error is logged and retried after a backoff.
        """
        now = self._clock()
        if self._retry_at is not None and now < self._retry_at:
            return None
        try:
            if self.pending and now - self._last_report >= self._report_interval:
                self._last_report = now
                return self.send_all()
            if now - self._last_contact >= self._heartbeat_interval:
                directive = self._client.heartbeat(self._assignment.trial_id, self._assignment.lease_id)
                self._succeeded()
                return directive
        except LeaseLostError:
            raise
        except Exception as exc:  # the coordinator is unreachable or failing: keep the trial going
            self.record_failure(exc)
        return None

    def send_all(self) -> Directive:
        """Send every queued point now, in batches; raises whatever the client raises."""
        result = CONTINUE
        while True:
            with self._lock:
                batch = list(self._pending[: self._max_batch])
            if not batch:
                return result
            directive = self._client.report_metrics(
                self._assignment.trial_id, self._assignment.lease_id, batch
            )
            with self._lock:
                # Only add() touched the list meanwhile, and it appends: the batch is still its head.
                del self._pending[: len(batch)]
            self.sent += len(batch)
            self._succeeded()
            if directive.stop:
                result = directive

    def record_failure(self, exc: BaseException) -> float:
        """Note a failed call; returns the seconds to wait before the next try."""
        self._failures += 1
        delay = min(self._base_backoff * 2 ** (self._failures - 1), self._max_backoff)
        self._retry_at = self._clock() + delay
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(
            level,
            "trial %s: coordinator call failed (%s: %s); %d point(s) kept, retrying in %.1fs",
            self._assignment.trial_number,
            type(exc).__name__,
            exc,
            self.pending,
            delay,
        )
        return delay

    def _succeeded(self) -> None:
        if self._failures:
            log.info("trial %s: coordinator reachable again", self._assignment.trial_number)
        self._failures = 0
        self._retry_at = None
        self._last_contact = self._clock()
