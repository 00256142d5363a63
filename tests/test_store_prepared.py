"""Prepared statements on the driver (SQLite's, psycopg) give what SQLAlchemy gives for the same statement."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import bindparam, create_engine, insert, select

from sweeper.store import statements
from sweeper.store.prepared import Prepared
from sweeper.store.schema import metadata, metrics, sweeps, trials


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    else:
        engine = create_engine(request.getfixturevalue("postgres_store_url"))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(sweeps).values(
                id="s1", method="grid", state="running", spec="{}", seed=1, created_at=0, updated_at=0
            )
        )
        yield conn
    engine.dispose()


def _trial(number: int, state: str) -> dict[str, object]:
    return {
        "sweep_id": "s1", "number": number, "state": state, "config": "{}", "config_key": str(number),
        "created_at": 1, "summary": "{}",
    }  # fmt: skip


def test_inserts_selects_and_updates_match_sqlalchemy(conn) -> None:
    first = statements.INSERT_TRIAL.scalar(conn, _trial(1, "running"))
    statements.INSERT_TRIAL.scalar(conn, {**_trial(2, "finished"), "lease_id": "x"})  # other columns
    # Each trial's row as SQLAlchemy reads it and as the prepared statement does.
    by_alchemy = conn.execute(select(trials).where(trials.c.id == first)).one()
    prepared = statements.TRIAL.first(conn, {"trial_id_": first})
    assert tuple(prepared) == tuple(by_alchemy) and prepared.number == 1 and prepared.lease_id is None
    assert isinstance(prepared.created_at, float)  # an int into a REAL column, converted as SQLAlchemy does
    # A literal the statement carries (state = 'running') is filled in: one running trial of two.
    assert statements.RUNNING_IN_SWEEP_OF_TRIAL.scalar(conn, {"trial_id_": first}) == 1
    changed = statements.UPDATE_TRIAL.run(conn, {"trial_id_": first, "state": "failed", "exit_code": 3})
    assert changed == 1
    row = statements.TRIAL.first(conn, {"trial_id_": first})
    assert (row.state, row.exit_code, row.config) == ("failed", 3, "{}")  # only the named columns
    assert statements.TRIAL.first(conn, {"trial_id_": 999}) is None


def test_many_parameter_sets_in_one_call_and_a_missing_parameter_refused(conn) -> None:
    trial_id = statements.INSERT_TRIAL.scalar(conn, _trial(1, "running"))
    add = Prepared(insert(metrics))
    points = [
        {"trial_id": trial_id, "seq": i, "name": "loss", "step": i, "value": 1.0 / (i + 1), "time": 0}
        for i in range(4)
    ]
    assert add.run(conn, points) == 4 and add.run(conn, []) == 0
    count = Prepared(select(metrics.c.value).where(metrics.c.trial_id == bindparam("t")))
    assert [r.value for r in count.all(conn, {"t": trial_id})] == [1.0, 0.5, 1.0 / 3, 0.25]
    with pytest.raises(ValueError, match="trial_id_"):
        statements.TRIAL.first(conn, {})


def test_the_drivers_errors_are_raised_as_sqlalchemy_raises_them(conn) -> None:
    # The store turns SQLAlchemy's OperationalError into a StoreError a person can read, and
    # catches its IntegrityError: a prepared statement raises the same classes.
    from sqlalchemy.exc import IntegrityError

    # Each in a savepoint: PostgreSQL takes no more statements in a transaction that failed.
    with pytest.raises(IntegrityError, match="(?i)not.null"), conn.begin_nested():
        statements.INSERT_TRIAL.scalar(conn, {"sweep_id": "s1"})
    add = Prepared(insert(metrics))
    with pytest.raises(IntegrityError, match="(?i)not.null"), conn.begin_nested():
        add.run(conn, [{"trial_id": 1, "seq": 0, "name": "loss", "step": 0}])  # no time


def test_a_statement_whose_results_sqlalchemy_would_convert_is_refused(conn) -> None:
    from sqlalchemy import Boolean, cast

    if conn.dialect.name != "sqlite":
        pytest.skip("psycopg reads booleans as SQLAlchemy does: nothing to refuse")

    # A boolean reads back as 0 or 1 from SQLite's driver, but as False or True through SQLAlchemy.
    flagged = Prepared(select(cast(trials.c.id > 0, Boolean).label("flag")))
    with pytest.raises(TypeError, match="converts"):
        flagged.all(conn, {})
