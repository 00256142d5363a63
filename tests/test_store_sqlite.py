"""The store on SQLite files: the conformance suite, schema migrations, URLs and errors."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, text
from store_conformance import StoreConformance, lease

from sweeper.store import SchemaVersionError, Store, StoreError, TrialDraft, open_store, statements
from sweeper.store.checkpoint import AUTOCHECKPOINT_PAGES
from sweeper.store.migrations import MIGRATIONS, Migration, latest_version
from sweeper.trials import MetricPoint, Sweep, TrialState


class TestSqliteStore(StoreConformance):
    undoes_a_failed_call_alone = True

    @pytest.fixture
    def store_url(self, sqlite_store_url: str) -> str:
        return sqlite_store_url


def version_of(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT value FROM sweeper_meta WHERE key = 'schema_version'").fetchone()[0])


def columns_of(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def indexes_of(path: Path, table: str) -> dict[str, list[str]]:
    with sqlite3.connect(path) as db:
        names = [row[1] for row in db.execute(f"PRAGMA index_list({table})") if row[3] == "c"]
        return {name: [row[2] for row in db.execute(f"PRAGMA index_info({name})")] for name in names}


def add_note(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE sweeps ADD COLUMN note TEXT NOT NULL DEFAULT 'kept'"))


NEXT = latest_version() + 1
WITH_NOTE = (*MIGRATIONS, Migration(NEXT, "add sweeps.note", add_note))


# --- schema versions ---------------------------------------------------------


def test_fresh_database_is_created_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(str(path)):
        pass
    assert version_of(path) == latest_version() == 3
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sweeper_meta", "sweeps", "trials", "metrics"} <= tables
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_upgrade_keeps_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    with open_store(str(path)) as store:
        sweep = store.create_sweep(spec={"method": "grid"}, method="grid", name="old", seed=1, now=1.0)
        trial = store.new_trial(sweep.id, lambda s, ts: TrialDraft({"lr": 0.1}), lease=lease(), now=2.0)
        assert trial is not None
        store.add_metrics(trial.id, "lease-1", [MetricPoint("loss", 0.5, 1, 1, 3.0)], now=3.0)
        before = store.get_trial(trial.id, with_history=True)
    capsys.readouterr()

    with open_store(str(path), migrations=WITH_NOTE) as store:
        assert store.get_sweep(sweep.id) == sweep
        assert store.get_trial(trial.id, with_history=True) == before
    assert f"from version {NEXT - 1} to {NEXT}" in capsys.readouterr().err
    assert version_of(path) == NEXT
    assert "note" in columns_of(path, "sweeps")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT note FROM sweeps").fetchall() == [("kept",)]

    with open_store(str(path), migrations=WITH_NOTE):
        pass
    assert capsys.readouterr().err == ""  # nothing to upgrade the second time


def test_a_version_1_store_upgrades_to_the_latest_version_and_keeps_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # written by sweeper at schema version 1
        db.executescript((Path(__file__).parent / "data" / "store_v1.sql").read_text())
    assert version_of(path) == 1 and "member" not in columns_of(path, "trials")
    assert "ix_trials_config_key" in indexes_of(path, "trials")
    with open_store(str(path)) as store:
        sweep = store.get_sweep("mwbeliwt")
        (old,) = store.list_trials(sweep.id, with_history=True)
        assert (sweep.name, sweep.seed, old.config, old.state) == ("old", 7, {"lr": 0.5}, TrialState.FINISHED)
        assert [(p.step, p.value) for p in old.history or ()] == [(0, 0.25), (1, 0.125)]
        assert old.summary == {"loss": 0.125} and (old.member, old.restore_from) == (None, None)
        new = store.new_trial(
            sweep.id,
            lambda s, ts: TrialDraft({"lr": 0.4}, member=3, restore_from=".sweeper/checkpoints/x/1"),
            lease=lease(),
            now=9.0,
        )
        assert new is not None and (new.member, new.restore_from) == (3, ".sweeper/checkpoints/x/1")
    assert "from version 1 to 3" in capsys.readouterr().err
    assert version_of(path) == 3
    assert {"member", "restore_from"} <= set(columns_of(path, "trials"))
    assert indexes_of(path, "trials")["ix_trials_sweep_state"] == ["sweep_id", "state"]
    assert "ix_trials_config_key" not in indexes_of(path, "trials")
    fresh = tmp_path / "fresh.db"
    open_store(str(fresh)).close()
    assert columns_of(fresh, "trials") == columns_of(path, "trials")  # upgraded and fresh agree
    assert indexes_of(fresh, "trials") == indexes_of(path, "trials")


def test_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    def add_then_fail(conn: Connection) -> None:
        add_note(conn)
        raise RuntimeError("step 2 broke")

    path = tmp_path / "s.db"
    open_store(str(path)).close()
    with pytest.raises(RuntimeError, match="step 2 broke"):
        open_store(str(path), migrations=(*MIGRATIONS, Migration(NEXT, "broken", add_then_fail)))
    assert version_of(path) == NEXT - 1
    assert "note" not in columns_of(path, "sweeps")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_store(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE sweeper_meta SET value = '{NEXT}' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError) as caught:
        open_store(str(path))
    assert str(caught.value) == (
        f"database schema version {NEXT} is newer than this sweeper understands ({NEXT - 1}): upgrade sweeper"
    )


def sweep_with_scored_trials(store: Store, count: int) -> Sweep:
    """A sweep with ``count`` running trials, each with one loss point."""
    sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    for i in range(count):
        trial = store.new_trial(sweep.id, lambda s, ts: TrialDraft({"i": len(ts)}), lease=lease(), now=2.0)
        assert trial is not None
        store.add_metrics(trial.id, "lease-1", [MetricPoint("loss", i, 1, 1, 3.0)], now=3.0)
    return sweep


def test_history_is_one_query_for_all_trials(sqlite_store_url: str) -> None:
    with open_store(sqlite_store_url) as store:
        sweep = sweep_with_scored_trials(store, 5)
        statements: list[str] = []
        engine = store._db.engine  # type: ignore[attr-defined]
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        listed = store.list_trials(sweep.id, with_history=True, states=[TrialState.RUNNING])
        assert len(listed) == 5 and all(len(t.history or ()) == 1 for t in listed)
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2


def test_counting_a_sweeps_running_trials_reads_only_those(sqlite_store_url: str) -> None:
    """Every trial's end counts the trials of its sweep still running: an index lookup, not a
    walk over every trial the sweep has had (without statistics, SQLite would take any index
    led by the sweep id)."""
    with open_store(sqlite_store_url) as store:
        sweep = sweep_with_scored_trials(store, 3)
        plans: list[str] = []
        engine = store._db.engine  # type: ignore[attr-defined]

        def explain(conn: Connection, cursor: object, statement: str, parameters: object, *_: object) -> None:
            if "count(" in statement and not statement.startswith("EXPLAIN"):
                found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()  # type: ignore[arg-type]
                plans.extend(row[-1] for row in found)

        event.listen(engine, "before_cursor_execute", explain)
        assert store.count_trials(sweep.id, states=[TrialState.RUNNING]) == 3
        # The count a trial's end makes, read once the trial is locked.
        with engine.connect() as conn:
            form = statements.RUNNING_IN_SWEEP_OF_TRIAL._form(conn, {"trial_id_": 1})
            found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {form.sql}", form.args({"trial_id_": 1})).all()
            finish_plan = [row[-1] for row in found]
    by_sweep_and_state = "USING COVERING INDEX ix_trials_sweep_state (sweep_id=? AND state=?)"
    assert len(plans) == 1 and by_sweep_and_state in plans[0]
    assert any(by_sweep_and_state in p for p in finish_plan)


# --- where the store lives ---------------------------------------------------


def test_default_store_is_under_dot_sweeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store() as store:
        store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    assert version_of(tmp_path / ".sweeper" / "sweeper.db") == latest_version()


@pytest.mark.parametrize("form", ["./x.db", "x.db", "sqlite:///x.db", "sqlite+pysqlite:///x.db", "ABSOLUTE"])
def test_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'x.db'}" if form == "ABSOLUTE" else form
    with open_store(url) as store:
        store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
    assert version_of(tmp_path / "x.db") == latest_version()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root:hunter2@db/sweeps", "unsupported store URL 'mysql://root:***@db/sweeps'"),
        ("postgresql+psycopg2://u:hunter2@db/s", "without '+psycopg2'"),
        ("", "empty store URL"),
        (":memory:", "not a file"),
        ("sqlite://", "not a file"),
        ("sqlite:///no/such/folder/x.db", "does not exist"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected.replace("*", r"\*").replace("+", r"\+")) as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_unreachable_postgres(scheme: str) -> None:
    url = f"{scheme}://sweeper:hunter2@127.0.0.1:{free_port()}/sweeper"
    with pytest.raises(StoreError, match="cannot open store") as caught:
        open_store(url)
    message = str(caught.value)
    assert "hunter2" not in message and "sweeper:***@127.0.0.1" in message


def test_a_short_password_is_hidden_without_mangling_the_message() -> None:
    port = free_port()
    with pytest.raises(StoreError) as caught:
        open_store(f"postgresql://u:p@127.0.0.1:{port}/db")
    message = str(caught.value)
    assert f'connection to server at "127.0.0.1", port {port} failed' in message, message
    assert "u:***@127.0.0.1" in message and ":p@" not in message


def test_a_password_with_an_at_sign_or_a_foreign_driver_gets_a_hint() -> None:
    with pytest.raises(StoreError, match="holds an '@'; write each one as %40") as caught:
        open_store("postgresql://u:hunter@2@127.0.0.1:5432/db")
    assert "hunter" not in str(caught.value)
    with pytest.raises(StoreError, match=r"without '\+psycopg2': postgresql://"):
        open_store("postgresql+psycopg2://u:p@127.0.0.1:5432/db")


def test_a_port_that_is_not_a_number_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"cannot read store URL 'postgresql://u:\*\*\*@127.0.0.1:abc/db'"):
        open_store("postgresql://u:hunter2@127.0.0.1:abc/db")


def test_a_password_in_the_query_string_is_hidden_too() -> None:
    # libpq takes ``?password=``; the store's label is in every message and the server's log.
    with pytest.raises(StoreError) as caught:
        open_store(f"postgresql://sweeper@127.0.0.1:{free_port()}/db?password=hunter2")
    message = str(caught.value)
    assert "hunter2" not in message and "sweeper@127.0.0.1" in message and "password=***" in message


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StoreError, match="notes.db"):
        open_store(str(path))


def test_running_trial_survives_reopening(sqlite_store_url: str) -> None:
    with open_store(sqlite_store_url) as store:
        sweep = store.create_sweep(spec={}, method="grid", name=None, seed=0, now=1.0)
        trial = store.new_trial(sweep.id, lambda s, ts: TrialDraft({"a": 1}), lease=lease(), now=2.0)
    with open_store(sqlite_store_url) as store:
        assert store.list_trials(sweep.id) == [trial]


# --- the write-ahead log -------------------------------------------------------


def test_the_log_is_copied_back_by_a_thread_not_by_commits(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(f"sqlite:///{path}") as store:
        with store._db.engine.begin() as conn:  # type: ignore[attr-defined]
            # A commit checkpoints only past the safety limit, not at SQLite's default of 1000 pages.
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == AUTOCHECKPOINT_PAGES
        sweep_with_scored_trials(store, 40)
        checkpointer = store._db._checkpointer  # type: ignore[attr-defined]
        written = time.monotonic()
        deadline = written + 10
        while (checkpointer.caught_up_at or 0) <= written and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (checkpointer.caught_up_at or 0) > written  # a pass after the last write copied it all
        # The database file alone, without its log, already holds the trials.
        alone = tmp_path / "alone.db"
        alone.write_bytes(path.read_bytes())
        with sqlite3.connect(alone) as db:
            assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 40
    assert not checkpointer._thread.is_alive()  # closing the store ends the thread
