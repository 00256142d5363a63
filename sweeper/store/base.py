"""The store contract. Every backend runs the same conformance suite (tests/store_conformance.py).

The store is the one source of truth: strategies and coordinators rebuild everything
from it. It owns state transitions and enforces them:

* a trial leaves RUNNING once, into one terminal state, and never changes after that;
* only the holder of a trial's current, unexpired lease may report metrics, renew the
  lease or finish the trial (:class:`~sweeper.protocol.LeaseLostError` otherwise);
* metric points are idempotent on ``(trial, seq, name)``: a batch sent twice counts once;
* :meth:`Store.new_trial` reads the history and inserts the new trial in one
  serialised transaction per sweep, so concurrent callers never both get the same slot.

Implementations are safe to call from several threads and several processes.
All times are seconds since the epoch, passed in by the caller (injected clock).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sweeper import protocol
from sweeper.trials import MetricPoint, Sweep, SweepState, Trial, TrialState


class StoreError(Exception):
    """Base class for store errors a caller can act on."""


class BatchAbandoned(StoreError):
    """A batch's transaction was given up, nothing of it written, because one of its calls failed
    where the store cannot undo that call alone: run the calls again, each on its own."""


class InvalidTransitionError(StoreError):
    """A state change the state machine forbids (for example changing a finished trial)."""


class SchemaVersionError(StoreError):
    """The database was written by another version of sweeper."""


class TrialNotFoundError(StoreError, protocol.TrialNotFoundError, KeyError):
    """No trial has this id: the protocol's error, a StoreError and a KeyError alike."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TrialDraft:
    """What a strategy decided to run next; the store turns it into a trial."""

    config: Mapping[str, Any]
    retry_of: int | None = None
    member: int | None = None  # population slot (method pbt)
    restore_from: str | None = None  # checkpoint location the trial starts from


@dataclass(frozen=True)
class TrialCall:
    """A call on one trial that a batch may run ahead of its other calls (:meth:`Store.trial_calls`):
    a metric report (its points; none for a heartbeat, which only renews the lease) or the
    trial's end (``points`` None)."""

    trial_id: int
    points: Sequence[MetricPoint] | None = None


@dataclass(frozen=True)
class LeaseCall:
    """A lease of a trial of one sweep among a batch's calls (:meth:`Store.lease_calls`)."""

    sweep_id: str


@dataclass(frozen=True)
class Lease:
    agent: str
    host: str
    lease_id: str
    expires_at: float


def idle_mark(trials: Sequence[Trial]) -> tuple[int, float | None]:
    """An idle sweep as :meth:`Store.idle_sweeps` gives it: how many trials it has and when the
    last of them ended (None where none has). It changes whenever a trial is added or ends."""
    ends = [t.ended_at for t in trials if t.ended_at is not None]
    return len(trials), max(ends, default=None)


class Store(ABC):
    # The database runs inside this process (SQLite): a call spends CPU here and waits on no
    # network, only, at times, on another process that writes to the same file.
    embedded = False

    def batch(self) -> AbstractContextManager[None]:
        """Until the block ends, this thread's calls may share one transaction, committed when it
        ends: each call sees what the calls before it did, but none is durable (or seen by other
        threads) before the block ends, and should the commit fail none was made (the block
        raises). A call that fails takes effect not at all; where the store cannot undo it alone,
        the block raises :class:`BatchAbandoned` with nothing of it written. A store may also send
        a call's writes to its database later in the block, so such a write may fail in a later
        call or at the block's end: the block then raises :class:`BatchAbandoned` too (or
        :class:`StoreError`, where the database is gone). A store may also commit each call on
        its own."""
        return nullcontext()

    def trial_calls(self, calls: Sequence[TrialCall]) -> AbstractContextManager[None]:
        """Inside a :meth:`batch`: the block runs these metric reports, heartbeats and trial ends
        (one call per trial) and nothing else. A store may read what they need ahead, all at once, and must
        then use what it read only for those calls, and only inside the block."""
        return nullcontext()

    def lease_calls(self, calls: Sequence[LeaseCall]) -> AbstractContextManager[None]:
        """Inside a :meth:`batch`: the block runs these leases (:meth:`new_trial`), among other
        calls. A store may prepare for all of them at once (take their trials' ids together)."""
        return nullcontext()

    def after_commit(self, step: Callable[[], None]) -> None:
        """``step()`` once what this thread's calls wrote so far is committed: at once, or when a
        :meth:`batch` it runs in ends (never, should its commit fail)."""
        step()

    # --- sweeps -------------------------------------------------------------

    @abstractmethod
    def create_sweep(
        self, *, spec: Mapping[str, Any], method: str, name: str | None, seed: int, now: float
    ) -> Sweep:
        """Create a RUNNING sweep with a fresh short id."""

    @abstractmethod
    def get_sweep(self, sweep_id: str) -> Sweep:
        """Raise :class:`~sweeper.protocol.SweepNotFoundError` when there is none."""

    @abstractmethod
    def list_sweeps(self) -> list[Sweep]:
        """All sweeps, newest first."""

    @abstractmethod
    def set_sweep_state(self, sweep_id: str, state: SweepState, *, now: float) -> Sweep:
        """Move a sweep along SWEEP_TRANSITIONS; setting the current state again is a no-op, but
        for RUNNING: a running sweep resumed again has its ``updated_at`` moved to ``now`` (the
        attempts made before it use up no retries, :func:`sweeper.planning.may_run_again`)."""

    # --- trials -------------------------------------------------------------

    @abstractmethod
    def new_trial(
        self,
        sweep_id: str,
        decide: Callable[[Sweep, Sequence[Trial]], TrialDraft | None],
        *,
        lease: Lease,
        now: float,
        history_of: str | None = None,
    ) -> Trial | None:
        """Atomically: lock the sweep, load its trials (summaries; with ``history_of``, also each
        trial's points of that one metric as its history), call ``decide``, and insert what it
        returns as a RUNNING trial numbered max+1 under ``lease``. ``None`` inserts nothing. A sweep
        that does not hand out trials (not RUNNING) gets ``None`` without ``decide`` being called."""

    @abstractmethod
    def get_trial(self, trial_id: int, *, with_history: bool = False) -> Trial:
        """Raise :class:`TrialNotFoundError` when there is none."""

    @abstractmethod
    def list_trials(
        self,
        sweep_id: str,
        *,
        with_history: bool = False,
        states: Sequence[TrialState] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        """Trials of a sweep in number order: those numbered above ``after``, at most ``limit`` of
        them (a page, for a reader that must not hold every point of a large sweep at once)."""

    def count_trials(self, sweep_id: str, *, states: Sequence[TrialState] | None = None) -> int:
        """How many trials :meth:`list_trials` would return, without loading them."""
        return len(self.list_trials(sweep_id, states=states))

    def idle_sweeps(self) -> dict[str, tuple[int, float | None]]:
        """The RUNNING sweeps with no trial running, each with how many trials it has and when
        the last of them ended (None where none has)."""
        idle: dict[str, tuple[int, float | None]] = {}
        for sweep in self.list_sweeps():
            if sweep.state is SweepState.RUNNING:
                trials = self.list_trials(sweep.id)
                if all(t.state is not TrialState.RUNNING for t in trials):
                    idle[sweep.id] = idle_mark(trials)
        return idle

    @abstractmethod
    def renew_lease(
        self, trial_id: int, lease_id: str, *, expires_at: float, now: float, interrupted: str | None = None
    ) -> Trial:
        """Extend a lease still held (``now <= expires_at``); raise LeaseLostError otherwise.
        ``interrupted``: the agent is ending the trial because it was told to stop; kept as the
        trial's stop reason, also by :meth:`expire_leases` should the agent die first."""

    @abstractmethod
    def add_metrics(
        self, trial_id: int, lease_id: str, points: Sequence[MetricPoint], *, now: float
    ) -> Trial:
        """Append points (duplicates by (seq, name) ignored) and update the trial's summary
        (the value at the highest (step, seq) of each metric). Renews nothing."""

    @abstractmethod
    def report_metrics(
        self, trial_id: int, lease_id: str, points: Sequence[MetricPoint], *, expires_at: float, now: float
    ) -> Trial:
        """:meth:`add_metrics` and :meth:`renew_lease` in one transaction, as an agent's report needs
        them: the lease is checked once at ``now``, and nothing changes when it is not held."""

    def finish_trial(
        self,
        trial_id: int,
        lease_id: str | None,
        state: TrialState,
        *,
        now: float,
        exit_code: int | None = None,
        stderr_tail: str | None = None,
        stop_reason: str | None = None,
    ) -> Trial:
        """End a RUNNING trial. ``lease_id`` None is for the coordinator itself (lease expiry,
        cancellation); otherwise it must match the current, unexpired lease."""
        ended, _running = self.end_trial(
            trial_id,
            lease_id,
            state,
            now=now,
            exit_code=exit_code,
            stderr_tail=stderr_tail,
            stop_reason=stop_reason,
        )
        return ended

    @abstractmethod
    def end_trial(
        self,
        trial_id: int,
        lease_id: str | None,
        state: TrialState,
        *,
        now: float,
        exit_code: int | None = None,
        stderr_tail: str | None = None,
        stop_reason: str | None = None,
    ) -> tuple[Trial, int]:
        """:meth:`finish_trial`, and how many trials of its sweep still run afterwards, in one
        transaction, as the coordinator needs both when an agent reports an end."""

    @abstractmethod
    def request_stop(self, trial_id: int, reason: str) -> Trial:
        """Record a stop decision for a running trial; its agent learns of it on the next call.
        The first reason recorded stays; a trial that already ended is returned unchanged."""

    @abstractmethod
    def expire_leases(self, *, now: float) -> list[Trial]:
        """Mark every RUNNING trial whose lease ran out as LOST; return them. One whose agent
        said it was interrupted (:meth:`renew_lease`) stays interrupted, and runs again unspent."""

    @abstractmethod
    def extend_running_leases(self, *, expires_at: float, held_at: float | None = None) -> list[Trial]:
        """Move the lease end of every RUNNING trial to at least ``expires_at``, even one that ran
        out but was not expired yet; return those trials. A coordinator calls this when it starts,
        so agents that kept running while it was down are not declared lost. With ``held_at``, only
        the leases still held then (ending at ``held_at`` or later): a coordinator back from a pause
        gives time to the agents it could not answer, not to those that had gone silent before."""

    # --- reading curves -----------------------------------------------------

    def metric_curves(self, sweep_id: str, name: str) -> dict[int, list[MetricPoint]]:
        """Every point of metric ``name`` of every trial of the sweep that logged it, keyed by trial
        number, each list in (step, seq) order. Backends answer it with one query; this default
        loads full histories. (Stopping rules, which read curves on every report, read only what
        can still change: :meth:`trial_curves`.)"""
        curves: dict[int, list[MetricPoint]] = {}
        for trial in self.list_trials(sweep_id, with_history=True):
            points = sorted((p for p in trial.history or () if p.name == name), key=lambda p: (p.step, p.seq))
            if points:
                curves[trial.number] = points
        return curves

    def trial_curves(
        self, sweep_id: str, name: str, *, after: int = 0, numbers: Collection[int] = ()
    ) -> list[Trial]:
        """The trials of the sweep numbered above ``after`` or among ``numbers``, in number order,
        each with its points of metric ``name`` (none, where it logged none) as its history, in
        (step, seq) order. A trial is read before its points, so one read as ended comes with all
        of them: an ended trial's points never change, and a reader that kept them need ask only
        for the trials added since and those it saw running (see :mod:`sweeper.stopping.curves`)."""
        chosen = set(numbers)
        return [
            trial.with_history(trial.points(name))
            for trial in self.list_trials(sweep_id, with_history=True)
            if trial.number > after or trial.number in chosen
        ]

    # --- lifecycle ----------------------------------------------------------

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
