"""A PostgreSQL store written at schema version 1 upgrades in place, once, keeping its data."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, inspect, text
from store_conformance import lease

from sweeper.store import TrialDraft, open_store, schema
from sweeper.store.migrations import latest_version
from sweeper.trials import TrialState

pytestmark = pytest.mark.postgres

V1_ROWS = """
INSERT INTO sweeper_meta VALUES ('schema_version', '1');
INSERT INTO sweeps VALUES ('mwbeliwt', 'old', 'random', 'running',
  '{"method": "random", "parameters": {"lr": {"min": 0.0, "max": 1.0}}}', 7, 1.0, 1.0);
INSERT INTO trials (sweep_id, number, state, config, config_key, agent, host, lease_id,
  lease_expires_at, created_at, ended_at, exit_code, summary)
  VALUES ('mwbeliwt', 1, 'finished', '{"lr": 0.5}', '{"lr":0.5}', 'a', 'h', 'lease-1',
  100.0, 2.0, 5.0, 0, '{"loss": 0.125}');
INSERT INTO metrics VALUES (1, 0, 'loss', 0, 0.25, 3.0), (1, 1, 'loss', 1, 0.125, 4.0);
"""


def write_version_1(url: str) -> None:
    """The tables as schema version 1 made them: today's, without what later versions added."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.meta, *schema.V1_TABLES])
        for column in schema.V2_TRIAL_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE trials DROP COLUMN {column}")
        conn.exec_driver_sql("DROP INDEX ix_trials_sweep_state")
        conn.exec_driver_sql("CREATE INDEX ix_trials_config_key ON trials (sweep_id, config_key)")
        conn.exec_driver_sql(V1_ROWS)
    engine.dispose()


def trial_columns(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns("trials")}
    finally:
        engine.dispose()


def trial_indexes(url: str) -> dict[str, list[str]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("trials")}  # type: ignore[misc]
    finally:
        engine.dispose()


def test_two_stores_opening_a_version_1_database_upgrade_it_once(
    postgres_store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_version_1(postgres_store_url)
    assert not set(schema.V2_TRIAL_COLUMNS) & trial_columns(postgres_store_url)
    assert "ix_trials_config_key" in trial_indexes(postgres_store_url)
    opened, errors = [], []

    def open_one() -> None:
        try:
            opened.append(open_store(postgres_store_url))
        except Exception as exc:  # reported below: a failed upgrade must not pass silently
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 2
    upgraded = f"from version 1 to {latest_version()}"
    assert capsys.readouterr().err.count(upgraded) == 1  # one upgrade, said once
    store = opened[0]
    try:
        sweep = store.get_sweep("mwbeliwt")
        (old,) = store.list_trials(sweep.id, with_history=True)
        assert (sweep.name, sweep.seed, old.config, old.state) == ("old", 7, {"lr": 0.5}, TrialState.FINISHED)
        assert [(p.step, p.value) for p in old.history or ()] == [(0, 0.25), (1, 0.125)]
        assert old.summary == {"loss": 0.125} and (old.member, old.restore_from) == (None, None)
        new = opened[1].new_trial(
            sweep.id,
            lambda s, ts: TrialDraft({"lr": 0.4}, member=3, restore_from="ckpt/1"),
            lease=lease(),
            now=9.0,
        )
        assert new is not None and (new.number, new.member, new.restore_from) == (2, 3, "ckpt/1")
    finally:
        for each in opened:
            each.close()
    assert set(schema.V2_TRIAL_COLUMNS) <= trial_columns(postgres_store_url)
    indexes = trial_indexes(postgres_store_url)
    assert indexes["ix_trials_sweep_state"] == ["sweep_id", "state"] and "ix_trials_config_key" not in indexes
    engine = create_engine(postgres_store_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        version = conn.execute(text("SELECT value FROM sweeper_meta WHERE key = 'schema_version'")).scalar()
    engine.dispose()
    assert int(version) == latest_version()
