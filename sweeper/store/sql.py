"""The store over SQLAlchemy Core, for SQLite files and PostgreSQL.

Every method runs in one transaction of its own, or, for SQLite writes that arrive together, in
a savepoint of its own within one shared transaction (:mod:`sweeper.store.group_commit`). Writes
lock what they decide on: PostgreSQL with ``SELECT ... FOR UPDATE``; SQLite takes the database
write lock at ``BEGIN IMMEDIATE`` (``with_for_update`` compiles to nothing there).
"""

from __future__ import annotations

import dataclasses
import secrets
import string
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from sweeper.protocol import SweepNotFoundError, is_interrupted
from sweeper.store import rows, rules, statements, summary
from sweeper.store.ahead import read_ahead, read_key
from sweeper.store.base import (
    BatchAbandoned,
    InvalidTransitionError,
    Lease,
    LeaseCall,
    Store,
    StoreError,
    TrialCall,
    TrialDraft,
    TrialNotFoundError,
)
from sweeper.store.bulk import Bulk
from sweeper.store.curves import read_trial_curves
from sweeper.store.database import Database
from sweeper.store.known import KnownTrials
from sweeper.store.prepared import Prepared, read_together
from sweeper.store.schema import metrics, sweeps, trials
from sweeper.trials import (
    SWEEP_TRANSITIONS,
    CountedTrials,
    MetricPoint,
    Sweep,
    SweepState,
    Trial,
    TrialState,
    count_states,
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
        self._handed_nothing: set[str] = set()  # sweeps whose last lease here handed no trial out
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
            self._batch.drafts, self._batch.leases = {}, _Leases()
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
        return _found_sweep(statement.first(conn, {"sweep_id_": sweep_id}), sweep_id)

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
            before = batch.reads.get(sweep_id) if batch is not None else None
            so_far: Sequence[Trial] | None = None
            if before is not None and before.writes == batch.writes and history_of is None:
                # This batch holds the sweep's lock since its last lease of it read the sweep, and
                # wrote nothing else since: what that read, and the trials added since, stand.
                sweep, ids = before.sweep, before.ids
                handing_out = sweep.state.hands_out_trials  # else answered below, without a read
                so_far = self._known.drafted(sweep_id, self._drafts()) if handing_out else []
            if so_far is None:  # ids taken ahead and not used yet still serve
                sweep, so_far, ids = self._lease_reads(
                    conn, sweep_id, keep, batch, before.ids if before else []
                )
                if batch is not None:
                    batch.reads[sweep_id] = _SweepRead(sweep, batch.writes, ids)
            if batch is not None:
                batch.wanted[sweep_id] -= 1
            if not sweep.state.hands_out_trials:
                self._handed_nothing.add(sweep_id)
                return None
            if history_of is not None:
                found = self._curves(conn, sweep_id, history_of)
                with_history = (t.with_history(found.get(t.number, ())) for t in so_far)
                so_far = CountedTrials(with_history, count_states(so_far))
            draft = decide(sweep, so_far)
            if draft is None:
                self._handed_nothing.add(sweep_id)
                return None
            self._handed_nothing.discard(sweep_id)
            if draft.retry_of is not None and all(t.number != draft.retry_of for t in so_far):
                raise StoreError(f"sweep {sweep_id} has no trial #{draft.retry_of} to retry")
            config = dict(draft.config)
            values = {
                "sweep_id": sweep_id,
                "number": so_far[-1].number + 1 if so_far else 1,  # so_far is in number order
                "state": TrialState.RUNNING.value,
                "config": rows.dumps(config),
                "config_key": rows.config_key(config),
                "retry_of": draft.retry_of,
                "member": draft.member,
                "restore_from": draft.restore_from,
                "agent": lease.agent,
                "host": lease.host,
                "lease_id": lease.lease_id,
                "lease_expires_at": lease.expires_at,
                "created_at": now,
                "summary": "{}",
            }
            if ids:
                trial_id = ids.pop(0)
                statements.INSERT_TRIAL_WITH_ID.send(conn, {"id": trial_id, **values})
            else:
                trial_id = statements.INSERT_TRIAL.scalar(conn, values)
            # What was just written, as a row: no need to read it back.
            trial = rows.trial_from_row(rows.NewTrialRow.of(trial_id, values))
            if batch is not None:  # for the batch's next lease of the sweep, should it read nothing
                self._known.add_drafted(sweep_id, self._drafts(), trial, keep)
            return trial

        leased = self._db.write(lease_one)
        for step in keep:  # a write that failed raised above, and keeps nothing
            self._db.after_commit(step)
        return leased

    def _lease_reads(
        self,
        conn: Connection,
        sweep_id: str,
        keep: list[Callable[[], None]],
        batch: _Leases | None,
        ids: list[int],
    ) -> tuple[Sweep, CountedTrials, list[int]]:
        """A lease's reads: the sweep's lock, then what changed in it since it was last read (on
        PostgreSQL, one round trip; the read sees what committed while the lock waited), and with
        them the ids of the trials the lease and the batch's other leases of the sweep will
        insert (besides ``ids``, taken before), unless the sweep's last lease handed nothing out:
        agents that wait on a sweep would use up ids (a sequence hands each out once, rollback or
        not)."""
        catch_up = self._known.plan(sweep_id, self._drafts())
        reads = [(statements.SWEEP_LOCKED, {"sweep_id_": sweep_id}), (catch_up.statement, catch_up.params)]
        wanted = (max(batch.wanted[sweep_id], 1) if batch is not None else 1) - len(ids)
        if self._postgres and sweep_id not in self._handed_nothing and wanted > 0:
            reads.append((statements.NEXT_TRIAL_IDS, {"n_": wanted}))
        locked, found, *next_ids = read_together(conn, *reads)
        sweep = _found_sweep(locked[0] if locked else None, sweep_id)
        # None: a sequence the column does not own
        ids = (ids + [row[0] for row in next_ids[0] if row[0] is not None]) if next_ids else ids
        if not sweep.state.hands_out_trials:
            return sweep, CountedTrials((), Counter()), ids
        # In a batch, what this read found is the draft the batch's later leases of the sweep use.
        return sweep, catch_up.apply(found, keep, as_draft=batch is not None), ids

    def _leases_here(self) -> _Leases | None:
        """This thread's batch's leases, on PostgreSQL (whose batch holds each lock it takes until
        it ends); None elsewhere."""
        return getattr(self._batch, "leases", None) if self._postgres else None

    def get_trial(self, trial_id: int, *, with_history: bool = False) -> Trial:
        with self._db.read() as conn:
            found = self._trials(conn, select(trials).where(trials.c.id == trial_id), with_history)
        if not found:
            raise TrialNotFoundError(f"no trial with id {trial_id}")
        return found[0]

    def list_trials(
        self,
        sweep_id: str,
        *,
        with_history: bool = False,
        states: Sequence[TrialState] | None = None,
    ) -> list[Trial]:
        keep: list[Callable[[], None]] = []
        with self._db.read() as conn:
            if with_history or states is not None:
                query = select(trials).where(trials.c.sweep_id == sweep_id)
                if states is not None:
                    query = query.where(trials.c.state.in_([TrialState(s).value for s in states]))
                found = self._trials(conn, query, with_history)
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
        of_sweep = trials.c.sweep_id == sweeps.c.id
        any_running = select(trials.c.id).where(of_sweep, trials.c.state == TrialState.RUNNING.value).exists()
        count = select(func.count()).where(of_sweep).scalar_subquery()
        last_end = select(func.max(trials.c.ended_at)).where(of_sweep).scalar_subquery()
        query = select(sweeps.c.id, count, last_end).where(
            sweeps.c.state == SweepState.RUNNING.value, ~any_running
        )
        with self._db.read() as conn:
            return {sweep_id: (int(n), ended_at) for sweep_id, n, ended_at in conn.execute(query)}

    def _trials(self, conn: Connection, query: Select[Any], with_history: bool) -> list[Trial]:
        """Trials matching ``query`` in number order; their history in one more query, not one each."""
        found = conn.execute(query.order_by(trials.c.number)).all()
        if not with_history:
            return [rows.trial_from_row(row) for row in found]
        history = self._histories(conn, query.with_only_columns(trials.c.id))
        return [rows.trial_from_row(row, history.get(row.id, ())) for row in found]

    def _histories(self, conn: Connection, trial_ids: Select[Any]) -> dict[int, list[MetricPoint]]:
        """The metric points of the trials whose ids ``trial_ids`` selects, by trial id, in one query."""
        chosen = trial_ids.subquery()
        query = select(metrics).where(metrics.c.trial_id.in_(select(chosen.c.id)))
        points = conn.execute(
            query.order_by(metrics.c.trial_id, metrics.c.step, metrics.c.seq, metrics.c.name)
        )
        history: dict[int, list[MetricPoint]] = defaultdict(list)
        for point in points:
            history[point.trial_id].append(rows.point_from_row(point))
        return history

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
        changes: dict[str, Any] = {"lease_expires_at": expires_at}
        if interrupted is not None:
            changes["stop_reason"] = interrupted

        def renew(conn: Connection) -> Trial:
            row = self._leased_row(conn, trial_id, lease_id, now)
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

        changes: dict[str, Any] = {} if expires_at is None else {"lease_expires_at": expires_at}
        if not points:

            def renew(conn: Connection) -> Trial:
                trial = rows.trial_from_row(self._leased_row(conn, trial_id, lease_id, now))
                if changes:
                    statements.UPDATE_TRIAL.send(conn, {"trial_id_": trial_id, **changes})
                return dataclasses.replace(trial, **changes)

            return self._write(renew)
        values, newest, latest_points, params = summary.points_read(trial_id, points)

        def record(conn: Connection) -> Trial:
            # With the lock, what the new summary needs (see sweeper.store.summary).
            row, latest = self._locked_row_and(conn, latest_points, params)
            rules.check_lease(row, lease_id, now)
            trial = rows.trial_from_row(row)
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

        return self._write(end)

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
            return self._trials(conn, select(trials).where(trials.c.id.in_(ids)), False)

        lost = self._db.write(expire)
        if lost:  # a pass that found nothing changed nothing
            self._wrote()
        return lost

    def extend_running_leases(self, *, expires_at: float) -> list[Trial]:
        def extend(conn: Connection) -> list[Trial]:
            running = trials.c.state == TrialState.RUNNING.value
            conn.execute(
                update(trials)
                .where(running)
                .where((trials.c.lease_expires_at < expires_at) | trials.c.lease_expires_at.is_(None))
                .values(lease_expires_at=expires_at)
            )
            return self._trials(conn, select(trials).where(running).order_by(trials.c.sweep_id), False)

        return self._write(extend)

    def metric_curves(self, sweep_id: str, name: str) -> dict[int, list[MetricPoint]]:
        with self._db.read() as conn:
            return self._curves(conn, sweep_id, name)

    def trial_curves(
        self, sweep_id: str, name: str, *, after: int = 0, numbers: Collection[int] = ()
    ) -> list[Trial]:
        with self._db.read() as conn:
            return read_trial_curves(conn, sweep_id, name, after, numbers)

    def _curves(self, conn: Connection, sweep_id: str, name: str) -> dict[int, list[MetricPoint]]:
        """The points of metric ``name`` of every trial of a sweep, by trial number, in step order."""
        # One indexed query: ix_metrics_curve serves (trial_id, name) and the (step, seq) order.
        query = (
            select(trials.c.number, metrics)
            .join(metrics, metrics.c.trial_id == trials.c.id)
            .where(trials.c.sweep_id == sweep_id, metrics.c.name == name)
            .order_by(trials.c.number, metrics.c.step, metrics.c.seq)
        )
        curves: dict[int, list[MetricPoint]] = defaultdict(list)
        for row in conn.execute(query):
            curves[row.number].append(rows.point_from_row(row))
        return dict(curves)

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"SqlStore({self.label!r})"


@dataclasses.dataclass
class _SweepRead:
    """What a batch's lease of a sweep read: its sweep (locked) and the trial ids taken ahead."""

    sweep: Sweep
    writes: int  # the batch's writes when it was read
    ids: list[int]  # for the batch's later leases of the sweep


@dataclasses.dataclass
class _Leases:
    """The leases of a PostgreSQL batch."""

    wanted: Counter[str] = dataclasses.field(default_factory=Counter)  # leases still to run, by sweep
    reads: dict[str, _SweepRead] = dataclasses.field(default_factory=dict)  # the last read of each sweep
    writes: int = 0  # writes so far, besides leases


def _found(row: Row[Any] | None, trial_id: int) -> Row[Any]:
    if row is None:
        raise TrialNotFoundError(f"no trial with id {trial_id}")
    return row


def _found_sweep(row: Row[Any] | None, sweep_id: str) -> Sweep:
    if row is None:
        raise SweepNotFoundError(f"no sweep with id {sweep_id!r}")
    return rows.sweep_from_row(row)
