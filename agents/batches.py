"""Sending a trial's queued points to the coordinator in batches it accepts.

A batch refused as too large (413) is sent again in smaller ones. A batch refused as invalid (422)
is split until the points the coordinator refuses are alone; those are left out, with a warning
naming the metric, and the rest is delivered: sending them again could never succeed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from sweeper.protocol import CONTINUE, CoordinatorClient, Directive
from sweeper.trials import MetricPoint

log = logging.getLogger(__name__)


class PointQueue(Protocol):
    """Where a reporter keeps points until the coordinator acknowledges them."""

    def append(self, points: Iterable[MetricPoint]) -> None: ...

    def unacked(self, limit: int | None = None) -> list[MetricPoint]: ...

    def ack(self, count: int) -> None: ...

    @property
    def pending(self) -> int: ...


class MemoryQueue:
    """A :class:`PointQueue` in memory, for callers that want no files."""

    def __init__(self) -> None:
        self._points: list[MetricPoint] = []
        self._lock = threading.Lock()

    def append(self, points: Iterable[MetricPoint]) -> None:
        with self._lock:
            self._points.extend(points)

    def unacked(self, limit: int | None = None) -> list[MetricPoint]:
        with self._lock:
            return list(self._points if limit is None else self._points[:limit])

    def ack(self, count: int) -> None:
        with self._lock:
            del self._points[:count]  # only appends happen meanwhile: the batch is still the head

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._points)


def is_invalid(exc: BaseException) -> bool:
    """The coordinator refused the request's content (HTTP 422): the same request can never succeed."""
    return getattr(exc, "status", None) == 422


class BatchSender:
    """Sends a queue's points to the coordinator in batches, acknowledging each batch it delivered.

    A 413 halves the batch size for good. A 422 halves the next batch until the refused point is
    alone, then leaves that point out and grows the batches again: a few calls per refused point.
    """

    def __init__(
        self, client: CoordinatorClient, trial_id: int, lease_id: str, label: str, max_batch: int
    ) -> None:
        self._client = client
        self._trial_id = trial_id
        self._lease_id = lease_id
        self._label = label
        self.max_batch = max(1, max_batch)
        self.refused: set[str] = set()  # names of the metrics whose points were left out

    def send(
        self, queue: PointQueue, on_sent: Callable[[], None] | None = None, *, stop_early: bool = False
    ) -> Directive:
        """Send until the queue is empty; returns a stop directive if any reply held one.
        ``on_sent`` is called after each batch the coordinator took. ``stop_early``: send only
        the points queued now, and return at the first reply that says stop; else a trial that
        logs faster than a report's round trip keeps this going, and its stop waiting, for as
        long as it runs."""
        result = CONTINUE
        limit = self.max_batch
        left = queue.pending if stop_early else None  # points still to send, when counted
        while batch := queue.unacked(limit if left is None else min(limit, left)):
            try:
                directive = self._client.report_metrics(self._trial_id, self._lease_id, batch)
            except Exception as exc:
                if getattr(exc, "status", None) == 413 and len(batch) > 1:
                    self.max_batch = limit = max(1, len(batch) // 2)  # the coordinator takes smaller ones
                    continue
                if not is_invalid(exc):
                    raise
                if len(batch) > 1:
                    limit = len(batch) // 2  # look for the refused point(s)
                    continue
                self._leave_out(batch[0], exc)
                queue.ack(1)
                left = None if left is None else left - 1
                continue
            queue.ack(len(batch))
            left = None if left is None else left - len(batch)
            if on_sent is not None:
                on_sent()
            limit = min(self.max_batch, limit * 2)
            if directive.stop:
                result = directive
                if stop_early:
                    break
        return result

    def _leave_out(self, point: MetricPoint, exc: BaseException) -> None:
        if point.name in self.refused:
            return  # one warning per metric: a script that logs it each step would flood the log
        self.refused.add(point.name)
        why = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        log.warning(
            "%s: metric %s (step %d) left out: the coordinator refuses it as invalid (%s); "
            "its later refused points are left out too, the other metrics are reported",
            self._label,
            _show(point.name),
            point.step,
            why,
        )


def _show(name: str, limit: int = 80) -> str:
    shown = repr(name)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
