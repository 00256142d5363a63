"""SQLite writes that arrive together share one transaction (sweeper.store.group_commit), on real files."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import IntegrityError
from store_conformance import lease

from sweeper.store import Store, StoreError, TrialDraft, open_store
from sweeper.store import known as known_module
from sweeper.store import rows as rows_module
from sweeper.store.database import Database
from sweeper.store.group_commit import GroupCommit
from sweeper.trials import MetricPoint


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as opened:
        with opened._db.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
            conn.execute(text("CREATE TABLE parents (id INTEGER PRIMARY KEY)"))
            conn.execute(
                text("CREATE TABLE children (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parents(id))")
            )
        yield opened


def database(store: Store) -> Database:
    return store._db  # type: ignore[attr-defined,no-any-return]


def note(body: str) -> Callable[[Connection], str]:
    def write(conn: Connection) -> str:
        conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        return body

    return write


def notes(store: Store) -> list[str]:
    with database(store).engine.connect() as conn:
        return sorted(row.body for row in conn.execute(text("SELECT body FROM notes")))


class Together:
    """Calls made while a first one holds the transaction open; they queue, then run together."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.release = threading.Event()
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []
        self.commits = 0
        event.listen(db.engine, "commit", self._counted)
        self._start("first", lambda: db.write(self._hold))
        self._wait_for(lambda: self._group._busy)

    @property
    def _group(self) -> GroupCommit:
        return self.db._group  # type: ignore[return-value]

    def _counted(self, _conn: Any) -> None:
        self.commits += 1

    def _hold(self, conn: Connection) -> str:
        assert self.release.wait(30)
        return note("first")(conn)

    def _start(self, name: str, call: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[name] = call()
            except Exception as exc:
                self.results[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def queue(self, name: str, call: Callable[[], Any]) -> None:
        """Start ``call`` (which makes one write) on a thread of its own; return once it queues."""
        queued = len(self._group._queue)
        self._start(name, call)
        self._wait_for(lambda: len(self._group._queue) > queued)

    def run(self) -> dict[str, Any]:
        self.release.set()
        for thread in self.threads:
            thread.join(30)
        event.remove(self.db.engine, "commit", self._counted)
        return self.results

    @staticmethod
    def _wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "the calls never queued"
            time.sleep(0.001)


def test_calls_that_arrive_together_share_one_commit(store: Store) -> None:
    together = Together(database(store))
    for name in ("a", "b", "c"):
        together.queue(name, lambda name=name: together.db.write(note(name)))
    results = together.run()
    assert results == {"first": "first", "a": "a", "b": "b", "c": "c"}
    assert together.commits == 2  # the first call's, then one for the three that queued behind it
    assert notes(store) == ["a", "b", "c", "first"]


def test_a_call_that_fails_is_rolled_back_alone(store: Store) -> None:
    def note_then_fail(conn: Connection) -> None:
        note("broken")(conn)
        raise ValueError("this call went wrong")

    together = Together(database(store))
    db = together.db
    together.queue("a", lambda: db.write(note("a")))
    together.queue("broken", lambda: db.write(note_then_fail))
    together.queue("b", lambda: db.write(note("b")))
    results = together.run()
    assert isinstance(results["broken"], ValueError)
    assert (results["a"], results["b"]) == ("a", "b")
    assert notes(store) == ["a", "b", "first"]  # not "broken": its savepoint was rolled back


def test_a_commit_that_fails_fails_every_call_and_keeps_nothing_read_in_it(store: Store) -> None:
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)

    def orphan_checked_at_commit(conn: Connection) -> None:
        conn.execute(text("PRAGMA defer_foreign_keys = ON"))
        conn.execute(text("INSERT INTO children (parent) VALUES (404)"))  # no such parent

    together = Together(database(store))
    # new_trial itself, twice in the shared transaction: the second reads the trial the first inserted.
    for name in ("lease-1", "lease-2"):
        together.queue(name, lambda: store.new_trial(sweep.id, first_config, lease=lease(), now=2.0))
    together.queue("orphan", lambda: together.db.write(orphan_checked_at_commit))
    results = together.run()
    assert isinstance(results["orphan"], Exception)
    # One error for every call of the transaction.
    assert results["lease-1"] is results["lease-2"] is results["orphan"]
    assert "FOREIGN KEY" in str(results["orphan"])
    assert notes(store) == ["first"]  # the call before, in a transaction of its own
    # The first lease's trial was read inside the failed transaction; none of that is kept.
    assert store.list_trials(sweep.id) == []
    again = store.new_trial(sweep.id, first_config, lease=lease(), now=3.0)
    assert again is not None and again.number == 1
    assert [t.number for t in store.list_trials(sweep.id)] == [1]


def test_a_lease_in_a_shared_transaction_keeps_what_it_read_only_once_that_commits(store: Store) -> None:
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    inside, leave = threading.Event(), threading.Event()

    def hold(_conn: Connection) -> None:  # after both leases, before the commit
        inside.set()
        assert leave.wait(30)

    together = Together(database(store))
    # The second lease reads the sweep with the first one's trial in it, not committed yet.
    for name in ("lease-1", "lease-2"):
        together.queue(name, lambda: store.new_trial(sweep.id, first_config, lease=lease(), now=2.0))
    together.queue("hold", lambda: together.db.write(hold))
    together.release.set()
    assert inside.wait(30)
    try:  # this thread's read sees committed trials only, from the database or from what is kept
        assert store.list_trials(sweep.id) == []
    finally:
        leave.set()
    results = together.run()
    assert [results["lease-1"].number, results["lease-2"].number] == [1, 2]
    assert [t.number for t in store.list_trials(sweep.id)] == [1, 2]


def first_config(_sweep: Any, trials: Any) -> TrialDraft:
    return TrialDraft({"x": len(trials)})


def test_trials_leased_in_one_transaction_get_their_own_numbers(store: Store) -> None:
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    together = Together(database(store))
    for i in range(4):
        together.queue(
            f"lease-{i}",
            lambda i=i: store.new_trial(
                sweep.id, first_config, lease=lease(f"agent-{i}", f"lease-{i}"), now=2.0
            ),
        )
    results = together.run()
    leased = [results[f"lease-{i}"] for i in range(4)]
    assert sorted(t.number for t in leased) == [1, 2, 3, 4]
    assert sorted(t.config["x"] for t in leased) == [0, 1, 2, 3]  # each decided on the ones before it
    assert [t.number for t in store.list_trials(sweep.id)] == [1, 2, 3, 4]


def test_a_call_that_waits_too_long_is_refused_and_never_runs(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as opened:
        db = database(opened)
        assert db._group is not None
        db._group._timeout = 0.3
        with db.engine.begin() as conn:
            conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
        together = Together(db)
        late: dict[str, BaseException] = {}
        started = time.monotonic()
        try:
            db.write(note("late"))
        except StoreError as exc:
            late["error"] = exc
        waited = time.monotonic() - started
        together.run()
        assert "database is locked (waited" in str(late["error"])
        assert waited >= 0.3
        assert notes(opened) == ["first"]


# --- a thread that holds the transaction (Store.batch) -------------------------


def test_a_batch_commits_its_calls_together_and_each_sees_the_ones_before(store: Store) -> None:
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    db = database(store)
    commits: list[int] = []  # this thread's (the reader below commits its read transactions)
    here = threading.get_ident()
    event.listen(
        db.engine, "commit", lambda _conn: commits.extend([1] if threading.get_ident() == here else [])
    )
    with store.batch():
        first = store.new_trial(sweep.id, first_config, lease=lease("a", "lease-a"), now=2.0)
        second = store.new_trial(sweep.id, first_config, lease=lease("b", "lease-b"), now=2.0)
        assert db.write(note("inside")) == "inside"
        # This thread reads what the batch wrote; no other thread sees it before the commit.
        assert [t.number for t in store.list_trials(sweep.id)] == [1, 2]
        elsewhere: list[Any] = []

        def read_elsewhere() -> None:
            with db.read() as conn:
                written = conn.execute(text("SELECT body FROM notes")).all()
            elsewhere.append((store.list_trials(sweep.id), written))

        reader = threading.Thread(target=read_elsewhere)
        reader.start()
        reader.join(30)
        assert elsewhere == [([], [])]
        assert commits == []
    assert commits == [1]
    assert first is not None and second is not None
    assert (first.number, second.number, second.config) == (1, 2, {"x": 1})
    assert [t.number for t in store.list_trials(sweep.id)] == [1, 2]
    assert notes(store) == ["inside"]


def test_a_call_that_fails_in_a_batch_raises_and_is_rolled_back_alone(store: Store) -> None:
    db = database(store)

    def note_then_fail(conn: Connection) -> None:
        note("broken")(conn)
        raise ValueError("this call went wrong")

    with store.batch():
        db.write(note("a"))
        with pytest.raises(ValueError, match="this call went wrong"):
            db.write(note_then_fail)
        db.write(note("b"))
    assert notes(store) == ["a", "b"]


def test_a_batch_whose_commit_fails_raises_and_keeps_nothing_it_read(store: Store) -> None:
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    db = database(store)
    after: list[str] = []

    def orphan_checked_at_commit(conn: Connection) -> None:
        conn.execute(text("PRAGMA defer_foreign_keys = ON"))
        conn.execute(text("INSERT INTO children (parent) VALUES (404)"))  # no such parent

    with pytest.raises(IntegrityError, match="FOREIGN KEY"), store.batch():
        leased = store.new_trial(sweep.id, first_config, lease=lease(), now=2.0)
        assert leased is not None and leased.number == 1
        assert [t.number for t in store.list_trials(sweep.id)] == [1]
        store.after_commit(lambda: after.append("ran"))
        db.write(orphan_checked_at_commit)
    assert after == []  # never committed
    assert store.list_trials(sweep.id) == []  # nothing read inside the batch was kept
    again = store.new_trial(sweep.id, first_config, lease=lease(), now=3.0)
    assert again is not None and again.number == 1


def test_other_threads_write_after_a_batch_and_steps_run_once_it_commits(store: Store) -> None:
    db = database(store)
    order: list[str] = []
    other = threading.Thread(target=lambda: order.append(db.write(note("other"))))
    with store.batch():
        db.write(note("batch"))
        store.after_commit(lambda: order.append("after commit"))
        other.start()
        deadline = time.monotonic() + 10
        while not db._group._queue:  # type: ignore[union-attr]  # the other thread waits its turn
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert order == []
    other.join(30)
    assert order == ["after commit", "other"]
    assert notes(store) == ["batch", "other"]
    store.after_commit(lambda: order.append("at once"))  # outside a batch: written already
    assert order[-1] == "at once"


def test_a_thread_waiting_to_hold_a_batch_is_not_taken_into_another_leaders_transaction(
    store: Store,
) -> None:
    together = Together(database(store))
    held: list[str] = []

    def batch_of_two() -> None:
        with store.batch():
            held.append(together.db.write(note("held-1")))
            held.append(together.db.write(note("held-2")))

    together.queue("a", lambda: together.db.write(note("a")))
    together.queue("batch", batch_of_two)
    together.queue("b", lambda: together.db.write(note("b")))
    results = together.run()
    assert (results["a"], results["batch"], results["b"]) == ("a", None, "b")
    assert held == ["held-1", "held-2"]
    # first; then "a" (led by the first call's thread, cut at the batch); the batch; then "b".
    assert together.commits == 4
    assert notes(store) == ["a", "b", "first", "held-1", "held-2"]


def test_the_reads_of_a_batch_each_catch_up_from_the_one_before(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease in a batch starts from what the batch's last read of the sweep found, uncommitted
    as it is, not from the last committed read: it converts only the rows changed since."""
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    running = [store.new_trial(sweep.id, first_config, lease=lease(), now=2.0) for _ in range(5)]
    assert all(t is not None for t in running)
    converted: list[int] = []
    convert = known_module.rows.trial_from_row

    def counted(row: Any, *args: Any) -> Any:
        converted.append(row.number)
        return convert(row, *args)

    monkeypatch.setattr(
        known_module, "rows", SimpleNamespace(**{**vars(rows_module), "trial_from_row": counted})
    )
    given: list[list[Any]] = []

    def record(_sweep: Any, so_far: Any) -> TrialDraft:
        given.append(list(so_far))
        return first_config(_sweep, so_far)

    def report(number: int, value: float) -> None:
        trial = running[number - 1]
        assert trial is not None
        store.add_metrics(trial.id, "lease-1", [MetricPoint("loss", value, 1, 1, 3.0)], now=3.0)

    with store.batch():
        report(3, 0.3)
        store.new_trial(sweep.id, record, lease=lease(), now=4.0)
        assert sorted(converted) == [3, 5]  # changed, and inserted after the last committed read
        converted.clear()
        report(1, 0.1)
        store.new_trial(sweep.id, record, lease=lease(), now=4.0)
        assert sorted(converted) == [1, 6]  # not 3 again: the first lease's read stands
    assert [t.number for t in given[-1]] == [1, 2, 3, 4, 5, 6]
    assert (given[-1][0].summary, given[-1][2].summary) == ({"loss": 0.1}, {"loss": 0.3})
    assert [t.number for t in store.list_trials(sweep.id)] == [1, 2, 3, 4, 5, 6, 7]


def nearly_full(store: Store) -> None:
    """From now on the database file may grow by only a few pages: a large write fails with
    SQLITE_FULL, on which SQLite rolls back the whole transaction, not only the statement."""
    engine = database(store).engine
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def limit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 8}")
        dbapi_conn.execute("PRAGMA cache_size = 5")  # pages go to the file early

    engine.dispose()


def test_a_batch_whose_whole_transaction_sqlite_rolled_back_fails_as_a_whole(store: Store) -> None:
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    nearly_full(store)
    db = database(store)
    after: list[str] = []
    with pytest.raises(StoreError, match="full"), store.batch():
        leased = store.new_trial(sweep.id, first_config, lease=lease(), now=2.0)
        assert leased is not None
        store.after_commit(lambda: after.append("ran"))
        with pytest.raises(StoreError, match="full"):
            db.write(note("x" * 300_000))
        with pytest.raises(StoreError, match="full"):  # the transaction is gone: nothing more runs
            db.write(note("small"))
    assert after == []
    assert store.count_trials(sweep.id) == 0 and store.list_trials(sweep.id) == []
    assert notes(store) == []


def test_a_group_whose_whole_transaction_sqlite_rolled_back_fails_every_call(store: Store) -> None:
    nearly_full(store)
    together = Together(database(store))
    db = together.db
    together.queue("a", lambda: db.write(note("a")))
    together.queue("big", lambda: db.write(note("x" * 300_000)))
    together.queue("b", lambda: db.write(note("b")))
    results = together.run()
    assert all(isinstance(results[name], StoreError) for name in ("a", "big", "b"))
    assert "full" in str(results["a"]) and results["a"] is results["b"]
    assert notes(store) == ["first"]  # the call before, in a transaction of its own


def test_a_batch_never_changes_what_another_thread_may_be_reading(store: Store) -> None:
    """A read in a batch that finds nothing new must not take the shared kept trials of the sweep
    as its own draft: once another thread keeps a newer object, the batch's later reads would
    write its uncommitted trials into the one other readers may still hold."""
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    store.new_trial(sweep.id, first_config, lease=lease(), now=2.0)
    store.list_trials(sweep.id)
    others = [store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0).id for _ in range(64)]
    for other in others:
        store.new_trial(other, first_config, lease=lease(), now=2.0)
    held_by_readers = known_module_kept(store, sweep.id)
    before = list(held_by_readers.by_number)

    def keep_another_copy() -> None:  # push the sweep out of what is kept, then read it afresh
        for other in others:
            store.list_trials(other)
        store.list_trials(sweep.id)

    with pytest.raises(RuntimeError, match="given up"), store.batch():
        assert [t.number for t in store.list_trials(sweep.id)] == [1]  # nothing new
        elsewhere = threading.Thread(target=keep_another_copy)
        elsewhere.start()
        elsewhere.join(30)
        assert known_module_kept(store, sweep.id) is not held_by_readers
        store.new_trial(sweep.id, first_config, lease=lease(), now=3.0)
        assert [t.number for t in store.list_trials(sweep.id)] == [1, 2]
        assert list(held_by_readers.by_number) == before  # untouched
        raise RuntimeError("batch given up")
    assert [t.number for t in store.list_trials(sweep.id)] == [1]


def known_module_kept(store: Store, sweep_id: str) -> Any:
    return store._known._sweeps[sweep_id]  # type: ignore[attr-defined]
