"""The checks the store enforces before it changes a trial: leases and state transitions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from sweeper.protocol import LeaseLostError, is_interrupted
from sweeper.store.base import InvalidTransitionError
from sweeper.trials import TRIAL_TRANSITIONS, TrialState


def describe(row: Row[Any]) -> str:
    """A trial as people know it: its number in its sweep (the store's own id is nobody's)."""
    return f"trial {row.number} of sweep {row.sweep_id}"


def check_lease(row: Row[Any], lease_id: str, now: float) -> None:
    """Raise LeaseLostError unless ``lease_id`` is the trial's current lease and has not run out.

    A lease is held while ``now <= expires_at``, the same bound expire_leases uses."""
    if row.state != TrialState.RUNNING.value:
        raise LeaseLostError(f"{describe(row)} is {row.state}: its lease is gone")
    if row.lease_id != lease_id:
        raise LeaseLostError(f"{describe(row)} is leased under another lease id, not {lease_id!r}")
    if row.lease_expires_at is not None and row.lease_expires_at < now:
        raise LeaseLostError(f"{describe(row)}: its lease expired {now - row.lease_expires_at:.1f}s ago")


def late_interruption(
    row: Row[Any], lease_id: str | None, state: TrialState, stop_reason: str | None
) -> str | None:
    """The stop reason a trial lost when its lease ran out takes from an end reported since under
    that lease, saying the trial was interrupted (its agent was told to stop while the coordinator
    was away, and said so once it was back): the trial stays lost, and counts as interrupted, not
    as an attempt. None for any other end (its lease is gone: :func:`check_lease` refuses it)."""
    late = (
        row.state == TrialState.LOST.value
        and lease_id is not None
        and row.lease_id == lease_id
        and state is TrialState.LOST
        and is_interrupted(stop_reason)
        and not is_interrupted(row.stop_reason)
    )
    return f"{stop_reason}; {row.stop_reason} before its end was reported" if late else None


def renewed(row: Row[Any], expires_at: float) -> float:
    """The lease end a renewal writes: never earlier than the one stored. A renewal that took its
    time before its process slept or was stopped would otherwise undo the time that a pause gave
    the lease meanwhile (:meth:`Store.extend_running_leases`)."""
    stored = row.lease_expires_at
    return expires_at if stored is None else max(stored, expires_at)


def check_trial_transition(row: Row[Any], state: TrialState) -> None:
    current = TrialState(row.state)
    if state not in TRIAL_TRANSITIONS[current]:
        raise InvalidTransitionError(f"{describe(row)} is {current.value}: it cannot become {state.value}")
