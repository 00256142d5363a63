"""The store over SQLAlchemy Core, for SQLite files and PostgreSQL.

Every method runs in one transaction of its own, or, for SQLite writes that arrive together, in
a savepoint of its own within one shared transaction (:mod:`sweeper.store.group_commit`). Writes
lock what they decide on: PostgreSQL with ``SELECT ... FOR UPDATE``; SQLite takes the database
write lock at ``BEGIN IMMEDIATE`` (``with_for_update`` compiles to nothing there).
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import string
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from sweeper.protocol import is_interrupted
from sweeper.store import reads, rows, rules, statements, summary
from sweeper.store.ahead import read_ahead, read_key
from sweeper.store.base import (
    BatchAbandoned,
    InvalidTransitionError,
    Lease,
    LeaseCall,
    Store,
    TrialCall,
    TrialDraft,
    TrialNotFoundError,
)
from sweeper.store.bulk import Bulk
from sweeper.store.curves import read_trial_curves, sweep_curves
from sweeper.store.database import Database
from sweeper.store.known import KnownTrials
from sweeper.store.leasing import BatchLeases, TrialLeasing
from sweeper.store.prepared import Prepared, read_together
from sweeper.store.schema import metrics, sweeps, trials
from sweeper.trials import (
    SWEEP_TRANSITIONS,
    MetricPoint,
    Sweep,
    SweepState,
    Trial,
    TrialState,
)

T = TypeVar("T")

_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 8
_ID_ATTEMPTS = 5


def new_sweep_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


class SqlStore(Store):
    def __init__(self, engine: Engine, *, label: str) -> None:
        dialect = engine.dialect.name
        self._postgres = dialect == "postgresql"
        self.embedded = dialect == "sqlite"
        self._known = KnownTrials(dialect)
        self._leasing = TrialLeasing(self._known, self._drafts, postgres=self._postgres)
        self._batch = threading.local()  # drafts, reads ahead, ends: while this thread runs a batch
        self._db = Database(engine, label=label)
        self.label = label
        insert_ignore = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._insert_points = Prepared(
            insert_ignore(metrics).on_conflict_do_nothing(),
            # PostgreSQL: many reports' as one; a point needs its trial's row
            bulk=Bulk.insert(metrics, needs=("trials", "trial_id"), on_conflict_do_nothing=True),
        )

    @contextmanager
    def batch(self) -> Iterator[None]:
        if getattr(self._batch, "drafts", None) is not None:  # already in one: part of it
            yield
            return
        with self._db.holding():
            self._batch.drafts, self._batch.leases = {}, BatchLeases()
            try:
                yield
            finally:
                self._batch.drafts = self._batch.leases = None

    @contextmanager
    def lease_calls(self, calls: Sequence[LeaseCall]) -> Iterator[None]:
        # The first lease of a sweep in the batch takes the ids of all of the batch's leases of it.
        leases = self._leases_here()
        if leases is None:
            yield
            return
        leases.wanted.update(call.sweep_id for call in calls)
        try:
            yield
        finally:
            leases.wanted.clear()

    def _write(self, work: Callable[[Connection], T]) -> T:
        """:meth:`Database.write`, counted in this thread's batch (:meth:`_wrote`)."""
        self._wrote()
        return self._db.write(work)

    def _wrote(self) -> None:
        """Count a write in this thread's batch: after one, a batch's next lease of a sweep reads
        the sweep again."""
        if (leases := self._leases_here()) is not None:
            leases.writes += 1

    @contextmanager
    def trial_calls(self, calls: Sequence[TrialCall]) -> Iterator[None]:
        # On PostgreSQL, in a batch: every call's trial lock, and then what each call reads with
        # it (a report's latest points, an end's count of the sweep's running trials), in three
        # statements and one round trip for all of them (sweeper.store.ahead). Nothing else in
        # the batch runs before these calls (heartbeats among them read nothing ahead), and each
        # writes only its own trial, so what was read stays true until its call uses it, except
        # the running counts, which the block's ends change: end_trial takes off those of the same
        # sweep before it (self._batch.ended).
        if not self._postgres or self._drafts() is None:
            yield
            return
        try:
            with self._db.read() as conn:  # the batch's transaction
                self._batch.ahead = read_ahead(conn, calls)
        except Exception as exc:  # the transaction is spoiled: each call on its own
            raise BatchAbandoned(f"store {self.label}: reading ahead for a batch's calls failed") from exc
        self._batch.ended = Counter()  # by sweep: the running trials the block's ends ended
        try:
            yield
        finally:
            self._batch.ahead = self._batch.ended = None

    def _drafts(self) -> dict[str, Any] | None:
        """What the reads of this thread's batch have read so far (see :meth:`KnownTrials.read`)."""
        return getattr(self._batch, "drafts", None)

    def after_commit(self, step: Callable[[], None]) -> None:
        self._db.after_commit(step)

    # --- sweeps -------------------------------------------------------------

    def create_sweep(
        self, *, spec: Mapping[str, Any], method: str, name: str | None, seed: int, now: float
    ) -> Sweep:
        values = {
            "name": name,
            "method": method,
            "state": SweepState.RUNNING.value,
            "spec": rows.dumps(spec),
            "seed": int(seed),
            "created_at": now,
            "updated_at": now,
        }
        for attempt in range(_ID_ATTEMPTS):
            sweep_id = new_sweep_id()

            def create(conn: Connection, sweep_id: str = sweep_id) -> Sweep:
                conn.execute(insert(sweeps).values(id=sweep_id, **values))
                return self._sweep(conn, sweep_id)

            try:
                return self._write(create)
            except IntegrityError:  # 36**8 ids: a clash is rare, two in a row rarer still
                if attempt == _ID_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def get_sweep(self, sweep_id: str) -> Sweep:
        with self._db.read() as conn:
            return self._sweep(conn, sweep_id)

    def list_sweeps(self) -> list[Sweep]:
        with self._db.read() as conn:
            result = conn.execute(select(sweeps).order_by(sweeps.c.created_at.desc(), sweeps.c.id))
            return [rows.sweep_from_row(row) for row in result]

    def set_sweep_state(self, sweep_id: str, state: SweepState, *, now: float) -> Sweep:
        state = SweepState(state)

        def change(conn: Connection) -> Sweep:
            current = self._sweep(conn, sweep_id, lock=True)
            if current.state is state and state is not SweepState.RUNNING:
                return current
            if current.state is not state and state not in SWEEP_TRANSITIONS[current.state]:
                raise InvalidTransitionError(
                    f"sweep {sweep_id} is {current.state.value}: it cannot become {state.value}"
                )
            conn.execute(
                update(sweeps).where(sweeps.c.id == sweep_id).values(state=state.value, updated_at=now)
            )
            return self._sweep(conn, sweep_id)

        return self._write(change)

    def _sweep(self, conn: Connection, sweep_id: str, *, lock: bool = False) -> Sweep:
        statement = statements.SWEEP_LOCKED if lock else statements.SWEEP
        return rows.found_sweep(statement.first(conn, {"sweep_id_": sweep_id}), sweep_id)

    # --- trials -------------------------------------------------------------

    def new_trial(
        self,
        sweep_id: str,
        decide: Callable[[Sweep, Sequence[Trial]], TrialDraft | None],
        *,
        lease: Lease,
        now: float,
        history_of: str | None = None,
    ) -> Trial | None:
        keep: list[Callable[[], None]] = []  # keeps what the lease read of the sweep
        batch = self._leases_here()

        def lease_one(conn: Connection) -> Trial | None:
            return self._leasing.lease_one(
                conn, sweep_id, decide, lease=lease, now=now, history_of=history_of, batch=batch, keep=keep
            )

        leased = self._db.write(lease_one)
        for step in keep:  # a write that failed raised above, and keeps nothing
            self._db.after_commit(step)
        return leased

    def _leases_here(self) -> BatchLeases | None:
        """This thread's batch's leases, on PostgreSQL (whose batch holds each lock it takes until
        it ends); None elsewhere."""
        return getattr(self._batch, "leases", None) if self._postgres else None

    def get_trial(self, trial_id: int, *, with_history: bool = False) -> Trial:
        with self._db.read() as conn:
            found = reads.trials_of(conn, select(trials).where(trials.c.id == trial_id), with_history)
        if not found:
            raise TrialNotFoundError(f"no trial with id {trial_id}")
        return found[0]

    def list_trials(
        self,
        sweep_id: str,
        *,
        with_history: bool = False,
        states: Sequence[TrialState] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[Trial]:
        if limit is not None and limit < 1:
            raise ValueError(f"a page of trials holds at least one, not {limit}")
        keep: list[Callable[[], None]] = []
        with self._db.read() as conn:
            if with_history or states is not None or after or limit is not None:
                query = select(trials).where(trials.c.sweep_id == sweep_id)
                if states is not None:
                    query = query.where(trials.c.state.in_([TrialState(s).value for s in states]))
                if after:
                    query = query.where(trials.c.number > after)
                if limit is not None:  # ordered here too: the histories' query selects the same page
                    query = query.order_by(trials.c.number).limit(limit)
                found = reads.trials_of(conn, query, with_history)
            else:  # every trial: what changed since the sweep was last read, not the whole sweep
                found = self._known.read(conn, sweep_id, keep, self._drafts())
            if not found:
                self._sweep(conn, sweep_id)  # an unknown sweep is an error, an empty one is not
        for step in keep:  # in a batch this read saw the batch's own writes: kept once committed
            self._db.after_commit(step)
        return found

    def count_trials(self, sweep_id: str, *, states: Sequence[TrialState] | None = None) -> int:
        query = select(func.count()).select_from(trials).where(trials.c.sweep_id == sweep_id)
        if states is not None:
            query = query.where(trials.c.state.in_([TrialState(s).value for s in states]))
        with self._db.read() as conn:
            found = conn.execute(query).scalar_one()
            if not found:
                self._sweep(conn, sweep_id)  # an unknown sweep is an error, an empty one is not
            return int(found)

    def idle_sweeps(self) -> dict[str, tuple[int, float | None]]:
        with self._db.read() as conn:
            return reads.idle_sweeps(conn)

    def _trial(self, conn: Connection, trial_id: int) -> Trial:
        return rows.trial_from_row(self._trial_row(conn, trial_id))

    def _trial_row(self, conn: Connection, trial_id: int, *, lock: bool = False) -> Row[Any]:
        statement = statements.TRIAL_LOCKED if lock else statements.TRIAL
        return _found(statement.first(conn, {"trial_id_": trial_id}), trial_id)

    def _locked_row_and(
        self, conn: Connection, then: Prepared, params: Mapping[str, Any]
    ) -> tuple[Row[Any], Any]:
        """The row of trial ``params["trial_id_"]``, locked, and the one row ``then`` reads once the
        lock is held (on PostgreSQL, in the same round trip)."""
        trial_id = params["trial_id_"]
        ahead = getattr(self._batch, "ahead", None)
        read = ahead.pop(read_key(then, params), None) if ahead else None
        if read is None:
            read = read_together(conn, (statements.TRIAL_LOCKED, {"trial_id_": trial_id}), (then, params))
        locked, found = read
        return _found(locked[0] if locked else None, trial_id), found[0]

    def _leased_row(self, conn: Connection, trial_id: int, lease_id: str, now: float) -> Row[Any]:
        row = self._trial_row(conn, trial_id, lock=True)
        rules.check_lease(row, lease_id, now)
        return row

    def renew_lease(
        self, trial_id: int, lease_id: str, *, expires_at: float, now: float, interrupted: str | None = None
    ) -> Trial:
        def renew(conn: Connection) -> Trial:
            row = self._leased_row(conn, trial_id, lease_id, now)
            changes: dict[str, Any] = {"lease_expires_at": rules.renewed(row, expires_at)}
            if interrupted is not None:
                changes["stop_reason"] = interrupted
            statements.UPDATE_TRIAL.send(conn, {"trial_id_": trial_id, **changes})
            # The locked row plus what this call changed: no need to read it back.
            return dataclasses.replace(rows.trial_from_row(row), **changes)

        return self._write(renew)

    def add_metrics(
        self, trial_id: int, lease_id: str, points: Sequence[MetricPoint], *, now: float
    ) -> Trial:
        return self._record_points(trial_id, lease_id, points, now=now, expires_at=None)

    def report_metrics(
        self, trial_id: int, lease_id: str, points: Sequence[MetricPoint], *, expires_at: float, now: float
    ) -> Trial:
        return self._record_points(trial_id, lease_id, points, now=now, expires_at=expires_at)

    def _record_points(
        self,
        trial_id: int,
        lease_id: str,
        points: Sequence[MetricPoint],
        *,
        now: float,
        expires_at: float | None,
    ) -> Trial:
        """Both add_metrics and report_metrics: the points, and the lease renewed when ``expires_at``
        is given, in one transaction under the trial's lock."""

        def changes_of(row: Row[Any]) -> dict[str, Any]:
            return {} if expires_at is None else {"lease_expires_at": rules.renewed(row, expires_at)}

        if not points:

            def renew(conn: Connection) -> Trial:
                row = self._leased_row(conn, trial_id, lease_id, now)
                trial, changes = rows.trial_from_row(row), changes_of(row)
                if changes:
                    statements.UPDATE_TRIAL.send(conn, {"trial_id_": trial_id, **changes})
                return dataclasses.replace(trial, **changes)

            return self._write(renew)
        values, newest, latest_points, params = summary.points_read(trial_id, points)

        def record(conn: Connection) -> Trial:
            # With the lock, what the new summary needs (see sweeper.store.summary).
            row, latest = self._locked_row_and(conn, latest_points, params)
            rules.check_lease(row, lease_id, now)
            trial, changes = rows.trial_from_row(row), changes_of(row)
            found = summary.add_points(conn, self._insert_points, trial, latest, values, newest, changes)
            # The locked row plus what this call changed: no need to read it back.
            return dataclasses.replace(trial, **changes, summary=found)

        return self._write(record)

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
        state = TrialState(state)
        changes = {
            "ended_at": now,
            "exit_code": exit_code,
            "stderr_tail": stderr_tail,
            "stop_reason": stop_reason,
        }

        def end(conn: Connection) -> tuple[Trial, int]:
            # With the lock, the sweep's running trials, this one as it was.
            count, params = statements.RUNNING_IN_SWEEP_OF_TRIAL, {"trial_id_": trial_id}
            ahead, ended = getattr(self._batch, "ahead", None), getattr(self._batch, "ended", None)
            counted_ahead = ahead is not None and read_key(count, params) in ahead
            row, (running,) = self._locked_row_and(conn, count, params)
            if (late := rules.late_interruption(row, lease_id, state, stop_reason)) is not None:
                update = {**changes, "ended_at": row.ended_at, "stop_reason": late}
                statements.UPDATE_TRIAL.send(conn, {"trial_id_": trial_id, "state": state.value, **update})
                # An ended trial changed, which what was read of its sweep takes for final: forgotten
                # now (this transaction's own reads), and once committed (reads under way meanwhile).
                self._known.forget(row.sweep_id, self._drafts())
                changed.append(row.sweep_id)
                if ended is not None and counted_ahead:  # as below: counted before the batch's ends
                    running -= ended[row.sweep_id]
                return dataclasses.replace(rows.trial_from_row(row), **update), running
            if lease_id is not None:
                rules.check_lease(row, lease_id, now)
            rules.check_trial_transition(row, state)
            statements.UPDATE_TRIAL.send(conn, {"trial_id_": trial_id, "state": state.value, **changes})
            was_running = row.state == TrialState.RUNNING.value
            if ended is not None:  # in a trial_calls block: counted before its earlier ends
                running -= ended[row.sweep_id] if counted_ahead else 0
                ended[row.sweep_id] += was_running
            running -= was_running
            # The locked row plus what this call changed: no need to read it back.
            return dataclasses.replace(rows.trial_from_row(row), state=state, **changes), running

        changed: list[str] = []  # the sweep of an ended trial that changed (a late interruption)
        result = self._write(end)
        if changed:
            self.after_commit(functools.partial(self._known.forget, changed[-1], None))
        return result

    def request_stop(self, trial_id: int, reason: str) -> Trial:
        def stop(conn: Connection) -> Trial:
            row = self._trial_row(conn, trial_id, lock=True)
            if row.state == TrialState.RUNNING.value and row.stop_requested is None:
                conn.execute(update(trials).where(trials.c.id == trial_id).values(stop_requested=reason))
                return self._trial(conn, trial_id)
            return rows.trial_from_row(row)

        return self._write(stop)

    def expire_leases(self, *, now: float) -> list[Trial]:
        def expire(conn: Connection) -> list[Trial]:
            expired = conn.execute(
                select(trials.c.id, trials.c.agent, trials.c.host, trials.c.stop_reason)
                .where(trials.c.state == TrialState.RUNNING.value, trials.c.lease_expires_at < now)
                .order_by(trials.c.id)  # one locking order, so two expirers cannot deadlock
                .with_for_update()
            ).all()
            for row in expired:
                why = f"lease expired (agent {row.agent} on {row.host} stopped heartbeating)"
                if is_interrupted(row.stop_reason):  # its agent died while ending it: still interrupted
                    why = f"{row.stop_reason}; {why} before the trial ended"
                conn.execute(
                    update(trials)
                    .where(trials.c.id == row.id)
                    .values(state=TrialState.LOST.value, ended_at=now, stop_reason=why)
                )
            if not expired:
                return []
            ids = [row.id for row in expired]
            return reads.trials_of(conn, select(trials).where(trials.c.id.in_(ids)), False)

        lost = self._db.write(expire)
        if lost:  # a pass that found nothing changed nothing
            self._wrote()
        return lost

    def extend_running_leases(self, *, expires_at: float, held_at: float | None = None) -> list[Trial]:
        def extend(conn: Connection) -> list[Trial]:
            chosen = trials.c.state == TrialState.RUNNING.value
            if held_at is not None:
                chosen = chosen & (trials.c.lease_expires_at >= held_at)
            conn.execute(
                update(trials)
                .where(chosen)
                .where((trials.c.lease_expires_at < expires_at) | trials.c.lease_expires_at.is_(None))
                .values(lease_expires_at=expires_at)
            )
            return reads.trials_of(conn, select(trials).where(chosen).order_by(trials.c.sweep_id), False)

        return self._write(extend)

    def metric_curves(self, sweep_id: str, name: str) -> dict[int, list[MetricPoint]]:
        with self._db.read() as conn:
            return sweep_curves(conn, sweep_id, name)

    def trial_curves(
        self, sweep_id: str, name: str, *, after: int = 0, numbers: Collection[int] = ()
    ) -> list[Trial]:
        with self._db.read() as conn:
            return read_trial_curves(conn, sweep_id, name, after, numbers)

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"SqlStore({self.label!r})"


def _found(row: Row[Any] | None, trial_id: int) -> Row[Any]:
    if row is None:
        raise TrialNotFoundError(f"no trial with id {trial_id}")
    return row
