"""Reporting how a trial ended: its last points, then its outcome, retried while the coordinator is away.

Policy: the outcome is written to the trial folder first, then retried for as long as the
coordinator cannot be reached (the agent would wait as long for its next trial, and a coordinator
restarted after any outage takes the end under the trial's lease), for ``timeout`` seconds
(default: twice the lease, at least 10 minutes) while it answers with errors, or 3 tries at most
a second apart once the agent is stopping. A report still undelivered then stays on disk, and
the next agent started in the same folder delivers it
(:func:`~sweeper.agents.reporting.deliver_leftovers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sweeper.agents.events import AgentEvent, TrialAbandoned, TrialEnded
from sweeper.agents.reporting import TrialReporter
from sweeper.agents.spool import Spool
from sweeper.agents.trialrun import StopSignal

from sweeper.protocol import Assignment, CoordinatorClient, LeaseLostError, TrialOutcome

log = logging.getLogger(__name__)

# Calls made after a stop get this many tries, so Ctrl-C never waits on a dead coordinator for long.
_TRIES_WHEN_STOPPING = 3
_PAUSE_WHEN_STOPPING = 1.0  # seconds between those tries, at most
# How long an undeliverable end report is retried at least, before it is left on disk.
_FINISH_RETRY_SECONDS = 600.0
# While an end waits for the coordinator, a line this often says so.
_WAITING_NOTICE_EVERY = 60.0


def report_end(
    client: CoordinatorClient,
    assignment: Assignment,
    reporter: TrialReporter,
    outcome: TrialOutcome,
    *,
    started: float,
    clock: Callable[[], float],
    timeout: float | None,
    stop: StopSignal,
    emit: Callable[[AgentEvent], None],
) -> None:
    """Deliver the trial's end, then emit :class:`TrialEnded`; :class:`TrialAbandoned` if it cannot be."""
    ran = clock() - started  # the trial's own time, not the wait for a coordinator that is away
    spool = reporter.queue if isinstance(reporter.queue, Spool) else None
    if spool is not None:
        _keep_on_disk(spool, assignment, outcome)
    if timeout is None:
        timeout = max(2 * assignment.lease_seconds, _FINISH_RETRY_SECONDS)
    deadline = clock() + timeout
    tries = 0
    said_at: float | None = None  # when the wait for the coordinator was last said
    while True:
        tries += 1
        try:
            try:
                reporter.send_all()
            except LeaseLostError:
                if not outcome.interrupted:
                    raise  # else its points count no more, and that it was interrupted still does
            client.finish_trial(assignment.trial_id, assignment.lease_id, outcome)
            break
        except LeaseLostError as exc:
            if spool is not None:
                spool.abandon(f"lease lost: {exc}")
            emit(TrialAbandoned(assignment, f"lease lost: {exc}"))
            return
        except Exception as exc:
            delay = reporter.record_failure(exc)
            away = _unreachable(exc)
            if (clock() >= deadline and not away) or (stop.requested and tries >= _TRIES_WHEN_STOPPING):
                kept = f"; kept in {spool.folder} for the next agent" if spool is not None else ""
                emit(TrialAbandoned(assignment, f"could not report the end to the coordinator: {exc}{kept}"))
                return
            # From the second failed try (one is a blip, said by the reporter), and now and then.
            waiting = tries >= 2 and (said_at is None or clock() - said_at >= _WAITING_NOTICE_EVERY)
            if waiting and not stop.requested:
                said_at = clock()  # a wait of minutes, said now and then: the agent is not hung
                _say_waiting(assignment, outcome, exc, None if away else deadline - said_at, spool)
            # Stopping, a blip gets its tries; an outage, whose backoff has grown meanwhile, is not
            # waited out (a scheduler's SIGKILL may be near): the end stays on disk.
            stop.pause(min(delay, _PAUSE_WHEN_STOPPING) if stop.requested else delay)
    if spool is not None:
        spool.delivered()
    emit(TrialEnded(assignment, outcome, ran, dict(reporter.summary)))


def _keep_on_disk(spool: Spool, assignment: Assignment, outcome: TrialOutcome) -> None:
    try:
        spool.keep_outcome(outcome)
    except OSError as exc:
        log.warning("trial %s: cannot keep the outcome on disk: %s", assignment.trial_number, exc)


def _unreachable(exc: Exception) -> bool:
    """Nothing answered (the coordinator is down, restarting, or cut off), as opposed to an answer
    that is an error (a coordinator that answers 500 to every end is not waited for forever)."""
    return isinstance(exc, ConnectionError | TimeoutError) and not getattr(exc, "answered", False)


def _say_waiting(
    assignment: Assignment, outcome: TrialOutcome, exc: Exception, left: float | None, spool: Spool | None
) -> None:
    if left is None:
        kept = f"; it is kept in {spool.folder} meanwhile" if spool is not None else ""
        how_long = f"retrying until it answers{kept}"
    else:
        then = (
            f"stays in {spool.folder} for the next agent here"
            if spool is not None
            else "is given up (the trial counts as lost)"
        )
        how_long = f"retrying for up to {max(left, 0.0) / 60:.0f} min more, then it {then}"
    log.warning(
        "trial %s ended (%s); the coordinator cannot take it yet (%s: %s): %s",
        assignment.trial_number,
        outcome.state.value,
        type(exc).__name__,
        exc,
        how_long,
    )
