"""The store conformance suite against a real PostgreSQL (SWEEPER_TEST_POSTGRES_URL).

Locally: ``export SWEEPER_TEST_POSTGRES_URL=$(sudo .ci/start-postgres.sh | tail -n 1)``.
Without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
from calls_support import in_one_batch
from sqlalchemy import create_engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from store_conformance import StoreConformance

from sweeper.protocol import LeaseLostError
from sweeper.server.calls import Hint, ThreadCalls
from sweeper.store import (
    BatchAbandoned,
    Lease,
    LeaseCall,
    Store,
    StoreError,
    TrialCall,
    TrialDraft,
    open_store,
)
from sweeper.store import ahead as ahead_module
from sweeper.store import engine as engine_module
from sweeper.store import leasing as leasing_module
from sweeper.store import prepared as prepared_module
from sweeper.store import sql as sql_module
from sweeper.store import statements as statements_module
from sweeper.trials import MetricPoint, TrialState

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreConformance):
    undoes_a_failed_call_alone = False

    @pytest.fixture
    def store_url(self, postgres_store_url: str) -> str:
        return postgres_store_url


def test_a_batch_whose_call_wrote_then_failed_is_given_up_with_nothing_written(
    postgres_store_url: str,
) -> None:
    """No savepoints on PostgreSQL: a call that wrote and then failed spoils the batch, and the
    batch is given up whole rather than committed with half of that call in it."""
    with open_store(postgres_store_url) as store:
        db = store._db  # type: ignore[attr-defined]

        def write_then_fail(conn: Any) -> None:
            conn.execute(text("UPDATE sweeps SET name = 'half-done'"))
            raise ValueError("this call went wrong")

        kept = store.create_sweep(spec={}, method="grid", name="before", seed=0, now=1.0)
        with pytest.raises(BatchAbandoned), store.batch():
            store.create_sweep(spec={}, method="grid", name="in the batch", seed=0, now=1.0)
            with pytest.raises(ValueError, match="went wrong"):
                db.write(write_then_fail)
            with pytest.raises(BatchAbandoned):  # nothing more runs in a spoiled transaction
                store.create_sweep(spec={}, method="grid", name="after", seed=0, now=1.0)
        assert [(s.id, s.name) for s in store.list_sweeps()] == [(kept.id, "before")]


_REFUSE_BOOM = """
CREATE FUNCTION refuse_boom() RETURNS trigger AS $$
BEGIN
    IF NEW.name = 'boom' THEN RAISE EXCEPTION 'metric boom refused'; END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_boom BEFORE INSERT ON metrics FOR EACH ROW EXECUTE FUNCTION refuse_boom();
"""


def _store_refusing_boom_metrics(store_url: str) -> Store:
    """A store whose database refuses, on the server, to store a metric named ``boom``: a write
    that fails only once it runs there."""
    store = open_store(store_url)
    engine = create_engine(make_url(store_url).set(drivername="postgresql+psycopg"))
    with engine.begin() as conn:
        conn.exec_driver_sql(_REFUSE_BOOM)
    engine.dispose()
    return store


def _running_trial(store: Store, sweep_id: str, lease_id: str) -> Any:
    def decide(sweep: Any, trials: Any) -> TrialDraft:
        return TrialDraft(config={"n": len(trials)})

    lease = Lease(agent="a", host="h", lease_id=lease_id, expires_at=100.0)
    return store.new_trial(sweep_id, decide, lease=lease, now=1.0)


@pytest.mark.parametrize("then", ["a later call", "a later SQLAlchemy read", "nothing"])
def test_a_batch_whose_queued_write_fails_on_the_server_is_given_up(
    postgres_store_url: str, then: str
) -> None:
    """A report's writes go to the server with the next statement of the batch, or at its end:
    should one fail there, the batch is given up whole, whichever call finds out."""
    with _store_refusing_boom_metrics(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        boom = [MetricPoint("boom", 1.0, 1, 1, 2.0)]
        with pytest.raises(BatchAbandoned), store.batch():
            reported = store.report_metrics(one.id, "l1", boom, expires_at=150.0, now=2.0)
            assert reported.summary == {"boom": 1.0}  # sent, not run yet
            if then == "a later call":
                with pytest.raises(DBAPIError, match="metric boom refused"):
                    store.renew_lease(two.id, "l2", expires_at=160.0, now=2.0)
                with pytest.raises(BatchAbandoned):
                    store.renew_lease(two.id, "l2", expires_at=170.0, now=2.0)
            if then == "a later SQLAlchemy read":  # it closes the pipeline before it runs
                with pytest.raises(DBAPIError, match="metric boom refused"):
                    store.get_trial(two.id)
        for trial in (one, two):
            stored = store.get_trial(trial.id, with_history=True)
            assert (stored.summary, stored.history, stored.lease_expires_at) == ({}, (), 100.0)


def _in_one_batch(calls: ThreadCalls, *queued: tuple[Callable[[], Any], Hint]) -> list[Any]:
    """Through the server's call thread: ``queued`` ((call, what it is) pairs) in one batch, then
    ``calls`` closed; each one's result, or the exception it raised."""

    async def run_all() -> list[Any]:
        return await asyncio.gather(*await in_one_batch(calls, *queued), return_exceptions=True)

    try:
        return asyncio.run(run_all())
    finally:
        calls.close()


def test_calls_of_a_given_up_batch_run_again_each_on_its_own(postgres_store_url: str) -> None:
    """Through the server's call thread: the call whose write the database refused hears why,
    and the calls batched with it take effect."""
    with _store_refusing_boom_metrics(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        boom = [MetricPoint("boom", 1.0, 1, 1, 2.0)]
        loss = [MetricPoint("loss", 0.5, 1, 1, 2.0)]
        reported, refused, renewed = _in_one_batch(
            ThreadCalls(store.batch),
            (lambda: store.report_metrics(two.id, "l2", loss, expires_at=150.0, now=2.0), None),
            (lambda: store.report_metrics(one.id, "l1", boom, expires_at=150.0, now=2.0), None),
            (lambda: store.renew_lease(two.id, "l2", expires_at=160.0, now=2.0), None),
        )
        assert isinstance(refused, DBAPIError) and "metric boom refused" in str(refused)
        assert (reported.summary, renewed.lease_expires_at) == ({"loss": 0.5}, 160.0)
        stored = store.get_trial(two.id, with_history=True)
        assert (stored.summary, len(stored.history or ()), stored.lease_expires_at) == (
            {"loss": 0.5},
            1,
            160.0,
        )
        assert store.get_trial(one.id, with_history=True).history == ()


def _while_a_batch_holds(
    store: Store, store_url: str, hold: Callable[[], None], then: Callable[[], Any], *, then_in_batch: bool
) -> Any:
    """``hold()`` in a batch that stays open until ``then()``, on another thread (in a batch of its
    own where ``then_in_batch``: its reads go with its lock), waits for one of its row locks; then
    the batch commits, and ``then()``'s result."""
    held, release, result = threading.Event(), threading.Event(), {}
    admin = create_engine(make_url(store_url).set(drivername="postgresql+psycopg", query={}))

    def waiting() -> bool:  # whether a connection to the database waits for a row lock
        with admin.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        return bool(found)

    def holder() -> None:
        with store.batch():
            hold()
            held.set()
            assert release.wait(30)

    def waiter() -> None:
        with store.batch() if then_in_batch else nullcontext():
            result["then"] = then()

    first = threading.Thread(target=holder)
    first.start()
    assert held.wait(30)
    second = threading.Thread(target=waiter)
    second.start()
    deadline = time.monotonic() + 30
    while not waiting():  # the second call's lock waits behind the batch's
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    first.join()
    second.join()
    admin.dispose()
    return result["then"]


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in-a-batch"])
def test_a_report_that_waited_for_the_trials_lock_sees_the_points_stored_meanwhile(
    postgres_store_url: str, in_batch: bool
) -> None:
    """A statement reads from a snapshot taken when it starts: what the new summary needs is read
    after the lock is held, so a report behind another one sees its points."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        trial = _running_trial(store, sweep.id, "l1")

        def report(value: float, step: int) -> Any:
            point = [MetricPoint("loss", value, step, step, 2.0)]
            return store.report_metrics(trial.id, "l1", point, expires_at=150.0, now=2.0)

        late = _while_a_batch_holds(
            store, postgres_store_url, lambda: report(0.1, 5), lambda: report(0.9, 3), then_in_batch=in_batch
        )
        assert late.summary == store.get_trial(trial.id).summary == {"loss": 0.1}  # step 5 is the latest


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in-a-batch"])
def test_the_end_of_the_last_running_trial_counts_what_ended_while_it_waited(
    postgres_store_url: str, in_batch: bool
) -> None:
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        ended: dict[str, int] = {}

        def hold_one_and_end_two() -> None:
            store.renew_lease(one.id, "l1", expires_at=150.0, now=2.0)  # holds trial one's lock
            ended["two"] = store.end_trial(two.id, "l2", TrialState.FINISHED, now=3.0)[1]

        def end_one() -> Any:
            return store.end_trial(one.id, "l1", TrialState.FINISHED, now=3.0)

        _, still_running = _while_a_batch_holds(
            store, postgres_store_url, hold_one_and_end_two, end_one, then_in_batch=in_batch
        )
        assert (ended["two"], still_running) == (1, 0)  # the second end is the sweep's last


def test_a_connection_lost_in_a_batch_gives_the_batch_up(postgres_store_url: str) -> None:
    """The database drops the batch's connection and an SQLAlchemy statement finds out (and
    SQLAlchemy invalidates the connection): the batch is given up, and the store works on."""
    store, drop = _store_dropping_connections(postgres_store_url, "sweeper-batch-drop")
    try:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        trial = _running_trial(store, sweep.id, "l1")
        with pytest.raises(BatchAbandoned), store.batch():
            store.get_trial(trial.id)
            assert drop() >= 1
            with pytest.raises(StoreError):
                store.get_trial(trial.id)
        assert store.get_trial(trial.id).lease_expires_at == 100.0
    finally:
        store.close()


# --- connections the database dropped ----------------------------------------


def _store_dropping_connections(store_url: str, name: str) -> tuple[Store, Callable[[], int]]:
    """A store on connections named ``name``, and a function that makes the database drop them all
    (as a database restart does), returning how many it dropped."""
    named = make_url(store_url).update_query_dict({"application_name": name})
    store = open_store(named.render_as_string(hide_password=False))
    admin = create_engine(make_url(store_url).set(drivername="postgresql+psycopg", query={}))

    def drop() -> int:
        with admin.connect() as conn:
            dropped = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :n"
                ),
                {"n": name},
            ).scalar_one()
        admin.dispose()
        return int(dropped)

    return store, drop


def _fill_pool(store: Store, connections: int) -> None:
    """Have the store's pool open ``connections`` connections at once, then keep them."""
    started = threading.Barrier(connections)

    def read() -> None:
        with store._db.read():  # type: ignore[attr-defined]
            started.wait(timeout=30)

    threads = [threading.Thread(target=read) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_connections_dropped_while_idle_are_replaced_before_use(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 0.0)  # every pooled connection counts as idle
    store, drop = _store_dropping_connections(postgres_store_url, "sweeper-idle-drop")
    try:
        sweep = store.create_sweep(spec={}, method="random", name=None, seed=1, now=1.0)
        _fill_pool(store, 3)
        assert drop() == 3
        assert store.get_sweep(sweep.id).id == sweep.id  # no error at all
    finally:
        store.close()


def test_connections_dropped_while_busy_cost_one_refused_call_at_most(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 1e9)  # no connection is ever pinged
    store, drop = _store_dropping_connections(postgres_store_url, "sweeper-busy-drop")
    try:
        sweep = store.create_sweep(spec={}, method="random", name=None, seed=1, now=1.0)
        _fill_pool(store, 3)
        assert drop() == 3
        try:
            store.get_sweep(sweep.id)
        except StoreError:
            pass  # the first call found its connection gone: an agent gets a 503 and retries
        # The pool discarded its other dead connections too: every later call works.
        for _ in range(4):
            assert store.get_sweep(sweep.id).id == sweep.id
    finally:
        store.close()


class _ReadsTogether:
    """Counts the store's round trips for a trial's lock and what a call reads with it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[int] = []  # per round trip, how many statements went together
        self.locked: list[list[int]] = []  # per round trip, the trials it locked, in order
        self.locks_first: list[bool] = []  # per round trip, whether its locks came before its reads
        real = sql_module.read_together

        def counted(conn: Any, *reads: Any) -> Any:
            self.statements.append(len(reads))
            locked = [_locked_by(statement, params) for statement, params in reads]
            self.locked.append([trial_id for ids in locked if ids is not None for trial_id in ids])
            locks = [ids is not None for ids in locked]
            self.locks_first.append(locks == sorted(locks, reverse=True))
            return real(conn, *reads)

        for module in (sql_module, leasing_module, ahead_module):
            monkeypatch.setattr(module, "read_together", counted)


def _locked_by(statement: Any, params: dict[str, Any]) -> list[int] | None:
    """The trials a read locks, in order; None for a read that locks no trial."""
    if statement is statements_module.TRIAL_LOCKED:
        return [params["trial_id_"]]
    if statement is statements_module.TRIALS_LOCKED:  # every trial of a block, locked in id order
        return list(params["ids_"])
    return None


def test_metric_reports_read_ahead_in_one_round_trip_and_store_what_each_would_alone(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two, three = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2", "l3"))
        store.report_metrics(one.id, "l1", [MetricPoint("loss", 0.5, 4, 4, 2.0)], expires_at=150.0, now=2.0)
        reports = [
            (three.id, "l3", [MetricPoint("loss", 0.3, 1, 1, 3.0)]),
            (one.id, "l1", [MetricPoint("loss", 0.9, 2, 5, 3.0)]),  # an older step: 0.5 stays the latest
            (two.id, "l2", [MetricPoint("loss", 0.4, 1, 1, 3.0), MetricPoint("acc", 0.8, 1, 2, 3.0)]),
            (two.id, "l2", [MetricPoint("loss", 0.2, 2, 3, 3.0)]),  # its second report reads after the first
        ]
        reads = _ReadsTogether(monkeypatch)
        ahead = [TrialCall(trial_id, points) for trial_id, _, points in reports]
        with store.batch(), store.trial_calls(ahead):
            answers = [
                store.report_metrics(trial_id, lease, points, expires_at=160.0, now=3.0)
                for trial_id, lease, points in reports
            ]
        # three trials' locks in one statement and their reads in another, in one round trip; then
        # the second report's
        assert reads.statements == [2, 2]
        assert reads.locked[0] == sorted([one.id, two.id, three.id])  # the block's trials, each once
        locking = str(statements_module.TRIALS_LOCKED.statement.compile(dialect=postgresql.dialect()))
        # Locked in id order, whatever order the ids come in: batches cannot deadlock.
        assert "ORDER BY trials.id" in locking and locking.endswith("FOR UPDATE")
        assert reads.locked[1] == [two.id]
        expected = [{"loss": 0.3}, {"loss": 0.5}, {"loss": 0.4, "acc": 0.8}, {"loss": 0.2, "acc": 0.8}]
        assert [answer.summary for answer in answers] == expected
        stored = {t.id: t for t in store.list_trials(sweep.id, with_history=True)}
        assert [stored[t.id].summary for t in (three, one, two)] == [expected[0], expected[1], expected[3]]
        assert [len(stored[t.id].history or ()) for t in (three, one, two)] == [1, 2, 3]
        assert {t.lease_expires_at for t in stored.values()} == {160.0}


def _statements_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of each statement the store runs on the driver from now on, in order."""
    run: list[str] = []
    real = prepared_module._execute

    def counted(conn: Any, sql: str, params: Any, *, many: bool = False) -> Any:
        run.append(sql)
        return real(conn, sql, params, many=many)

    monkeypatch.setattr(prepared_module, "_execute", counted)
    return run


def test_a_blocks_reports_and_ends_write_one_statement_per_kind(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The points of all of a block's reports go as one INSERT, their trials' summaries as one
    UPDATE, and the ends as one more: not two statements per report and one per end."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two, three, four = (_running_trial(store, sweep.id, f"l{n}") for n in range(1, 5))
        run = _statements_run(monkeypatch)
        reports = [
            (t, f"l{n}", [MetricPoint("loss", 0.1 * n, n, n, 2.0)])
            for n, t in enumerate((one, two, three), 1)
        ]
        calls = [TrialCall(t.id, points) for t, _, points in reports] + [TrialCall(four.id)]
        with store.batch(), store.trial_calls(calls):
            for trial, lease, points in reports:
                store.report_metrics(trial.id, lease, points, expires_at=150.0, now=2.0)
            store.end_trial(four.id, "l4", TrialState.FINISHED, now=3.0)
        inserts = [sql for sql in run if sql.startswith("INSERT INTO metrics")]
        updates = [sql for sql in run if sql.startswith("UPDATE trials")]
        assert len(inserts) == 1 and len(updates) == 2
        stored = {t.id: t for t in store.list_trials(sweep.id, with_history=True)}
        assert [stored[t.id].summary for t, _, _ in reports] == [{"loss": 0.1 * n} for n in (1, 2, 3)]
        assert [len(stored[t.id].history or ()) for t, _, _ in reports] == [1, 1, 1]
        assert {stored[t.id].lease_expires_at for t, _, _ in reports} == {150.0}
        assert (stored[four.id].state, stored[four.id].ended_at) == (TrialState.FINISHED, 3.0)


def test_held_writes_keep_their_order_and_every_later_statement_sees_them(postgres_store_url: str) -> None:
    """Writes held to go as one statement still act in the order they were made: a second update
    of one trial wins, and a read after them, the store's own or SQLAlchemy's, sees them."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        update = statements_module.UPDATE_TRIAL
        seen: list[Any] = []

        def write(conn: Any) -> None:
            update.send(conn, {"trial_id_": two.id, "summary": '{"n": 1}'})
            update.send(conn, {"trial_id_": one.id, "summary": '{"n": 2}', "stop_reason": "why"})
            update.send(conn, {"trial_id_": one.id, "summary": '{"n": 3}'})  # held after the one before
            seen.append(statements_module.TRIAL.first(conn, {"trial_id_": one.id}).summary)
            update.send(conn, {"trial_id_": two.id, "summary": '{"n": 4}'})
            update.send(conn, {"trial_id_": two.id, "summary": '{"n": 5}'})
            seen.append(conn.execute(text(f"SELECT summary FROM trials WHERE id = {two.id}")).scalar_one())

        store._db.write(write)
        assert seen == ['{"n": 3}', '{"n": 5}']
        assert (store.get_trial(one.id).summary, store.get_trial(two.id).summary) == ({"n": 3}, {"n": 5})
        assert store.get_trial(one.id).stop_reason == "why"


def test_a_report_refused_in_the_trial_calls_block_hears_why_and_the_others_take_effect(
    postgres_store_url: str,
) -> None:
    """Through the server's call thread: a report under a lease that is not the trial's hears
    why, as it would alone, and the calls batched with it take effect."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        reported, refused, also_reported = _in_one_batch(
            ThreadCalls(store.batch, store.trial_calls),
            _loss_report(store, two.id, "l2"),
            _loss_report(store, one.id, "not-l1"),
            _loss_report(store, one.id, "l1"),
        )
        assert isinstance(refused, LeaseLostError) and "not 'not-l1'" in str(refused)
        assert reported.summary == also_reported.summary == {"loss": 0.5}
        assert [len(t.history or ()) for t in store.list_trials(sweep.id, with_history=True)] == [1, 1]


def test_a_lease_is_one_round_trip_and_its_trial_takes_the_next_id(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's lock, the catch-up read of its trials and the new trial's id go together; the
    insert goes with the commit, and the trial is stored as the lease returned it."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        first = _running_trial(store, sweep.id, "l1")
        reads = _ReadsTogether(monkeypatch)
        monkeypatch.setattr(statements_module.INSERT_TRIAL, "scalar", None)  # nothing waits for the insert
        second = _running_trial(store, sweep.id, "l2")
        assert reads.statements == [3]
        assert second.id > first.id and (second.number, second.config) == (2, {"n": 1})
        stored = store.get_trial(second.id)
        assert (stored.number, stored.lease_id, stored.config) == (2, "l2", {"n": 1})
        assert stored.state is TrialState.RUNNING
        assert [t.id for t in store.list_trials(sweep.id)] == [first.id, second.id]


def test_leases_that_hand_nothing_out_use_up_no_trial_ids(postgres_store_url: str) -> None:
    """Agents waiting on a sweep ask for work every second or two: a sequence's ids are not given
    back, so only a lease that may hand a trial out takes one ahead."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        first = _running_trial(store, sweep.id, "l1")
        lease = Lease(agent="a", host="h", lease_id="none", expires_at=100.0)
        for _ in range(50):
            assert store.new_trial(sweep.id, lambda sweep, trials: None, lease=lease, now=2.0) is None
        second = _running_trial(store, sweep.id, "l2")
        assert first.id < second.id <= first.id + 2  # one id at most went to the first empty lease
        assert store.get_trial(second.id).number == 2


def test_a_trial_id_sequence_the_column_does_not_own_still_gives_leases_ids(postgres_store_url: str) -> None:
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        with store._db.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.exec_driver_sql("ALTER SEQUENCE trials_id_seq OWNED BY NONE")
        first, second = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        assert [t.id for t in store.list_trials(sweep.id)] == [first.id, second.id]


def test_a_read_ahead_that_fails_gives_the_batch_up_and_its_calls_run_again_each_on_its_own(
    postgres_store_url: str,
) -> None:
    """Another program holds a reported trial's lock past the store's lock timeout: the batch's
    read ahead fails, and its calls run again one by one; only the blocked report fails."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        one, two = (_running_trial(store, sweep.id, lease) for lease in ("l1", "l2"))
        engine = store._db.engine  # type: ignore[attr-defined]
        engine.dispose()

        def short_lock_timeout(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.cursor().execute("SET lock_timeout = 300")
            dbapi_conn.commit()

        sqlalchemy_event.listen(engine, "connect", short_lock_timeout)
        other = create_engine(make_url(postgres_store_url).set(drivername="postgresql+psycopg"))
        with other.connect() as conn, conn.begin():
            conn.exec_driver_sql(f"SELECT id FROM trials WHERE id = {one.id} FOR UPDATE")
            reported, blocked, renewed = _in_one_batch(
                ThreadCalls(store.batch, store.trial_calls),
                _loss_report(store, two.id, "l2"),
                _loss_report(store, one.id, "l1"),
                (lambda: store.renew_lease(two.id, "l2", expires_at=160.0, now=2.0), None),
            )
        other.dispose()
        assert isinstance(blocked, StoreError) and "lock timeout" in str(blocked)
        assert (reported.summary, renewed.lease_expires_at) == ({"loss": 0.5}, 160.0)
        assert store.get_trial(one.id).summary == {} and store.get_trial(two.id).summary == {"loss": 0.5}


def test_trial_ends_read_ahead_count_the_ends_before_them_in_the_block(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each end's count of its sweep's running trials, read for all of them at once, still takes
    off the trials the block ended before it: the last one of a sweep sees none left running."""
    with open_store(postgres_store_url) as store:
        sweeps = [store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0) for _ in range(2)]
        one, two, three = (_running_trial(store, sweeps[0].id, lease) for lease in ("l1", "l2", "l3"))
        other = _running_trial(store, sweeps[1].id, "o1")
        ends = [(three, "l3"), (other, "o1"), (one, "l1")]
        reads = _ReadsTogether(monkeypatch)
        with store.batch(), store.trial_calls([TrialCall(t.id) for t, _ in ends]):
            running = [store.end_trial(t.id, lease, TrialState.FINISHED, now=3.0)[1] for t, lease in ends]
            # a trial's second call in the batch, after the block, counts for itself
            assert store.end_trial(two.id, "l2", TrialState.FINISHED, now=3.0)[1] == 0
        assert reads.statements == [2, 2] and reads.locked[0] == sorted([one.id, three.id, other.id])
        assert reads.locks_first[0]  # every count reads what committed while any of the locks waited
        assert running == [2, 0, 1]  # three's end left 2 running; other's sweep none; one's end left 1
        assert {t.state for t in store.list_trials(sweeps[0].id)} == {TrialState.FINISHED}


def test_a_sweep_whose_last_trials_end_in_one_batch_is_finished(postgres_store_url: str) -> None:
    """Through the coordinator and the server's call thread: the last end of the batch counts
    the ends before it, sees no trial left running, and finishes the sweep; nobody need ask."""
    from sweeper.coordinator import Coordinator
    from sweeper.protocol import AgentInfo, Assignment, TrialOutcome
    from sweeper.spec import parse_sweep
    from sweeper.trials import SweepState

    with open_store(postgres_store_url) as store:
        coordinator = Coordinator(store)
        sweep = coordinator.create_sweep(
            parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2]}}})
        )
        leased = [coordinator.next_trial(sweep.id, AgentInfo(name=f"a{i}", host="h")) for i in range(2)]
        assert all(isinstance(a, Assignment) for a in leased)
        done = TrialOutcome(TrialState.FINISHED, exit_code=0)
        ends = [
            (lambda a=a: coordinator.finish_trial(a.trial_id, a.lease_id, done), TrialCall(a.trial_id))
            for a in leased
        ]
        assert _in_one_batch(ThreadCalls(store.batch, store.trial_calls), *ends) == [None, None]
        assert coordinator.get_sweep(sweep.id).state is SweepState.FINISHED


def test_a_batchs_leases_of_a_sweep_read_it_once_and_insert_their_trials_as_one(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the coordinator and the server's call thread: the first lease of a grid sweep
    locks and reads it and takes every lease's id; the others hold its lock and read nothing,
    yet each sees the trials leased before it; the inserts go as one statement."""
    from sweeper.coordinator import Coordinator
    from sweeper.protocol import AgentInfo, Assignment
    from sweeper.spec import parse_sweep

    with open_store(postgres_store_url) as store:
        coordinator = Coordinator(store)
        sweep = coordinator.create_sweep(
            parse_sweep({"method": "grid", "parameters": {"x": {"values": [1, 2, 3, 4, 5]}}})
        )
        first = coordinator.next_trial(sweep.id, AgentInfo(name="a0", host="h"))
        reads = _ReadsTogether(monkeypatch)
        run = _statements_run(monkeypatch)
        leases = [
            (
                lambda i=i: coordinator.next_trial(sweep.id, AgentInfo(name=f"a{i}", host="h")),
                LeaseCall(sweep.id),
            )
            for i in range(1, 5)
        ]
        leased = _in_one_batch(ThreadCalls(store.batch, store.trial_calls, store.lease_calls), *leases)
        assert all(isinstance(a, Assignment) for a in [first, *leased]), leased
        assert reads.statements == [3]  # the lock, the catch-up read and four ids
        assert len([sql for sql in run if sql.startswith("INSERT INTO trials")]) == 1
        assert [a.trial_number for a in leased] == [2, 3, 4, 5]
        assert len({a.trial_id for a in [first, *leased]}) == 5
        stored = store.list_trials(sweep.id)
        assert sorted(t.config["x"] for t in stored) == [1, 2, 3, 4, 5]  # each lease saw the ones before
        assert [(t.number, t.lease_id) for t in stored] == [
            (a.trial_number, a.lease_id) for a in [first, *leased]
        ]


_WRITES = {
    "an end": lambda store, t: store.end_trial(t.id, "l1", TrialState.FINISHED, now=2.0)[0],
    "a report": lambda store, t: store.report_metrics(
        t.id, "l1", [MetricPoint("loss", 0.5, 1, 1, 2.0)], expires_at=100.0, now=2.0
    ),
    "a heartbeat": lambda store, t: store.renew_lease(t.id, "l1", expires_at=150.0, now=2.0),
}


@pytest.mark.parametrize("write", list(_WRITES))
def test_a_write_between_a_batchs_leases_of_a_sweep_makes_the_next_one_read_it_again(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """A lease after another write of the batch reads the sweep again, and decides from what
    that write changed; the id taken ahead for it still serves."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        written = _running_trial(store, sweep.id, "l1")
        seen: list[dict[int, tuple[Any, ...]]] = []

        def decide(sweep: Any, trials: Any) -> TrialDraft:
            seen.append({t.number: (t.state, t.summary, t.lease_expires_at) for t in trials})
            return TrialDraft(config={"n": len(trials)})

        lease = Lease(agent="a", host="h", lease_id="l", expires_at=100.0)
        reads = _ReadsTogether(monkeypatch)
        with store.batch(), store.lease_calls([LeaseCall(sweep.id)] * 3):
            leased = [store.new_trial(sweep.id, decide, lease=lease, now=2.0)]
            after = _WRITES[write](store, written)
            leased += [store.new_trial(sweep.id, decide, lease=lease, now=2.0) for _ in range(2)]
        first = (after.state, after.summary, after.lease_expires_at)
        assert first != (TrialState.RUNNING, {}, 100.0)  # the write changed what a lease sees
        new = (TrialState.RUNNING, {}, 100.0)
        assert seen == [{1: (TrialState.RUNNING, {}, 100.0)}, {1: first, 2: new}, {1: first, 2: new, 3: new}]
        # the first lease's read; the write's (a heartbeat's lock goes alone); the second lease's,
        # which takes no id (the first took three); the third lease reads nothing
        assert reads.statements == ([3, 2] if write == "a heartbeat" else [3, 2, 2])
        assert [t.number for t in leased] == [2, 3, 4]
        assert [t.number for t in store.list_trials(sweep.id)] == [1, 2, 3, 4]


@pytest.mark.parametrize("cache", ["dropped", "replaced by an older read"])
def test_a_batchs_later_leases_decide_from_what_its_first_lease_read_whatever_the_cache_holds(
    postgres_store_url: str, cache: str
) -> None:
    """The first lease finds nothing new against what the store keeps of the sweep; meanwhile
    another thread's read replaces what is kept, or pushes it out: the later leases still see
    every trial, and what is kept after the commit is every trial."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        for lease_id in ("l1", "l2"):
            _running_trial(store, sweep.id, lease_id)
        older = store._known._sweeps[sweep.id]  # what a read before the second trial kept
        store.list_trials(sweep.id)  # what is kept is up to date: the batch's read finds nothing new
        seen: list[list[int]] = []

        def decide(sweep: Any, trials: Any) -> TrialDraft:
            seen.append([t.number for t in trials])
            if len(seen) == 1:  # another thread, while the first lease decides
                if cache == "dropped":
                    store._known._sweeps.clear()
                else:
                    store._known._keep(sweep.id, older)
            return TrialDraft(config={"n": len(trials)})

        lease = Lease(agent="a", host="h", lease_id="l", expires_at=100.0)
        with store.batch(), store.lease_calls([LeaseCall(sweep.id)] * 2):
            leased = [store.new_trial(sweep.id, decide, lease=lease, now=2.0) for _ in range(2)]
        assert seen == [[1, 2], [1, 2, 3]]
        assert [t.number for t in leased] == [3, 4]
        assert [t.number for t in store.list_trials(sweep.id)] == [1, 2, 3, 4]


def test_a_batchs_leases_change_a_copy_of_what_the_store_keeps_not_what_it_keeps(
    postgres_store_url: str,
) -> None:
    """What the store keeps of a sweep between batches is shared with other threads' reads: the
    batch's leases add their trials to a copy of it, kept once the batch commits."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        _running_trial(store, sweep.id, "l1")
        store.list_trials(sweep.id)  # what is kept is up to date: the batch's read finds nothing new
        kept = store._known._sweeps[sweep.id]
        lease = Lease(agent="a", host="h", lease_id="l", expires_at=100.0)
        with store.batch(), store.lease_calls([LeaseCall(sweep.id)] * 2):
            for _ in range(2):
                store.new_trial(
                    sweep.id, lambda s, ts: TrialDraft(config={"n": len(ts)}), lease=lease, now=2.0
                )
        assert list(kept.by_number) == [1]  # unchanged
        assert list(store._known._sweeps[sweep.id].by_number) == [1, 2, 3]


def test_a_batchs_leases_of_a_paused_sweep_read_it_once(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents polling a paused sweep: the batch's first lease reads that it is paused, the others
    answer from that read."""
    from sweeper.trials import SweepState

    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        store.set_sweep_state(sweep.id, SweepState.PAUSED, now=2.0)
        reads = _ReadsTogether(monkeypatch)
        lease = Lease(agent="a", host="h", lease_id="l", expires_at=100.0)
        with store.batch(), store.lease_calls([LeaseCall(sweep.id)] * 3):
            leased = [
                store.new_trial(sweep.id, lambda s, ts: TrialDraft(config={}), lease=lease, now=2.0)
                for _ in range(3)
            ]
        assert leased == [None, None, None] and len(reads.statements) == 1


def test_an_idle_sweep_that_cannot_be_judged_is_looked_at_once_even_in_a_batch_given_up(
    postgres_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look that fails would fail again: it counts at once, not when a batch commits, so a
    batch given up does not make every later pass fail on it again."""
    from sweeper.coordinator import Coordinator

    now = [10.0]
    with open_store(postgres_store_url) as store:
        coordinator = Coordinator(store, clock=lambda: now[0])
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        trial = _running_trial(store, sweep.id, "l1")
        store.end_trial(trial.id, "l1", TrialState.FINISHED, now=now[0])
        looked: list[str] = []

        def judge(sweep_id: str) -> None:
            looked.append(sweep_id)
            raise ValueError("a spec this version cannot read")

        monkeypatch.setattr(coordinator, "_finish_idle_sweep_if_complete", judge)
        now[0] += 2
        with pytest.raises(BatchAbandoned), store.batch():
            coordinator.expire_leases()
            with pytest.raises(LeaseLostError):  # a call of the batch fails: the batch is given up
                store.renew_lease(trial.id, "not-l1", expires_at=50.0, now=now[0])
        for _ in range(3):
            now[0] += 2
            coordinator.expire_leases()
        assert looked == [sweep.id]


def test_leases_that_read_histories_keep_the_ids_taken_ahead(postgres_store_url: str) -> None:
    """A lease for a strategy that needs the trials' histories reads the sweep every time; the
    ids the batch's first lease took for the others still serve them."""
    with open_store(postgres_store_url) as store:
        sweep = store.create_sweep(spec={}, method="pbt", name=None, seed=0, now=1.0)
        lease = Lease(agent="a", host="h", lease_id="l", expires_at=100.0)

        def decide(sweep: Any, trials: Any) -> TrialDraft:
            return TrialDraft(config={"n": len(trials)})

        with store.batch(), store.lease_calls([LeaseCall(sweep.id)] * 5):
            leased = [
                store.new_trial(sweep.id, decide, lease=lease, now=2.0, history_of="loss") for _ in range(5)
            ]
        ids = [t.id for t in leased]
        assert ids == list(range(ids[0], ids[0] + 5))  # five ids from the sequence, not 1 + 2 + ... + 5
        assert [t.config["n"] for t in leased] == [0, 1, 2, 3, 4]


def test_the_idle_pass_looks_again_after_a_batch_that_was_given_up(postgres_store_url: str) -> None:
    """The lease-expiry pass ran in a batch (the first lease after its interval) that was given up
    afterwards: the sweep it finished is running again, and the next pass looks again."""
    from sweeper.coordinator import Coordinator
    from sweeper.protocol import AgentInfo, Assignment
    from sweeper.spec import parse_sweep
    from sweeper.trials import SweepState

    now = [10.0]
    with open_store(postgres_store_url) as store:
        coordinator = Coordinator(store, clock=lambda: now[0])
        one_point = {"method": "grid", "parameters": {"x": {"values": [1]}}}
        sweep = coordinator.create_sweep(parse_sweep(one_point))
        trial = coordinator.next_trial(sweep.id, AgentInfo(name="a", host="h"))
        assert isinstance(trial, Assignment)
        store.end_trial(trial.trial_id, trial.lease_id, TrialState.FINISHED, now=now[0])  # as races leave it
        now[0] += 2
        with pytest.raises(BatchAbandoned), store.batch():
            coordinator.expire_leases()
            assert store.get_sweep(sweep.id).state is SweepState.FINISHED  # in the batch
            with pytest.raises(LeaseLostError):  # a call of the batch fails: the batch is given up
                store.renew_lease(trial.trial_id, trial.lease_id, expires_at=50.0, now=now[0])
        assert store.get_sweep(sweep.id).state is SweepState.RUNNING
        now[0] += 2
        coordinator.expire_leases()
        assert store.get_sweep(sweep.id).state is SweepState.FINISHED


def _loss_report(store: Store, trial_id: int, lease: str) -> tuple[Callable[[], Any], TrialCall]:
    """A metric report of loss 0.5 at step 1 under ``lease``, and what it is, for :func:`_in_one_batch`."""
    loss = [MetricPoint("loss", 0.5, 1, 1, 2.0)]

    def report() -> Any:
        return store.report_metrics(trial_id, lease, loss, expires_at=150.0, now=2.0)

    return report, TrialCall(trial_id, loss)
