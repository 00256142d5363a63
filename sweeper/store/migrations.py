"""Schema versions and the steps between them.

Each step runs inside the one transaction that upgrades the database, so a step that
fails leaves the database at the version it had. A fresh database runs every step from
version 1, so a fresh database and an upgraded one end up the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, TextIO

from sqlalchemy import Connection, Engine, func, insert, inspect, select, update

from sweeper.store import schema
from sweeper.store.base import SchemaVersionError, StoreError
from sweeper.store.engine import READ_ONLY

_VERSION_KEY = "schema_version"
# Any constant will do: it keeps two processes from creating the tables at the same time.
_PG_MIGRATION_LOCK = 0x5377_6565_7065_72


class Migration(NamedTuple):
    version: int
    description: str
    apply: Callable[[Connection], None]


def _create_v1(conn: Connection) -> None:
    # The tables as schema.py describes them now, so a fresh database gets every later column
    # here; each later step adds only what an older database lacks, so both end up the same.
    schema.metadata.create_all(conn, tables=list(schema.V1_TABLES))


def _add_trial_columns(conn: Connection, names: Sequence[str]) -> None:
    """Add the trials columns in ``names`` that the table lacks, typed as schema.py types them."""
    present = {column["name"] for column in inspect(conn).get_columns(schema.trials.name)}
    preparer = conn.dialect.identifier_preparer
    for name in names:
        if name in present:
            continue
        column = schema.trials.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        table = preparer.format_table(schema.trials)
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {preparer.format_column(column)} {kind}")


def _add_population(conn: Connection) -> None:
    _add_trial_columns(conn, schema.V2_TRIAL_COLUMNS)


def _index_trial_states(conn: Connection) -> None:
    preparer = conn.dialect.identifier_preparer
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {preparer.quote(schema.V3_DROPPED_INDEX)}")
    schema.trials_by_sweep_state.create(conn, checkfirst=True)  # a fresh database's step 1 made it


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create sweeps, trials and metrics", _create_v1),
    Migration(2, "add trials.member and trials.restore_from (population-based training)", _add_population),
    Migration(3, "index trials by sweep and state", _index_trial_states),
)


def latest_version(steps: Sequence[Migration] = MIGRATIONS) -> int:
    return steps[-1].version if steps else 0


def _check_steps(steps: Sequence[Migration]) -> None:
    versions = [step.version for step in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise StoreError(f"migration steps must be numbered 1, 2, 3 ... in order, got {versions}")


def read_version(conn: Connection) -> int:
    """The database's schema version; 0 for an empty database."""
    if not conn.dialect.has_table(conn, schema.meta.name):
        return 0
    value = conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.key == _VERSION_KEY)
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def _refuse_newer(found: int, latest: int) -> None:
    if found > latest:
        raise SchemaVersionError(
            f"database schema version {found} is newer than this sweeper understands ({latest}): "
            "upgrade sweeper"
        )


def migrate(
    engine: Engine,
    steps: Sequence[Migration] = MIGRATIONS,
    *,
    label: str = "the database",
    log: TextIO | None = None,
    create: bool = True,
) -> int:
    """Bring the database to the latest version of ``steps``; return that version. ``create=False``:
    a database without a store is refused, not given one (a command pointed at the wrong database
    must not add sweeper's tables to it)."""
    _check_steps(steps)
    latest = latest_version(steps)
    # A read first, so that opening an up-to-date database takes no write lock.
    with engine.connect().execution_options(**READ_ONLY) as conn:
        found = read_version(conn)
    _refuse_newer(found, latest)
    if found == 0 and not create:
        raise StoreError(
            f"no sweeper store in {label}: the database holds none of sweeper's tables; check the URL "
            "(a store is made by the first 'sweeper run', 'sweeper sweep' or 'sweeper server' on it)"
        )
    if found == latest:
        return found
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
        found = read_version(conn)  # another process may have upgraded it meanwhile
        _refuse_newer(found, latest)
        if found == latest:
            return found
        schema.meta.create(conn, checkfirst=True)
        for step in steps[found:]:
            step.apply(conn)
        if found == 0:
            conn.execute(insert(schema.meta).values(key=_VERSION_KEY, value=str(latest)))
        else:
            conn.execute(
                update(schema.meta).where(schema.meta.c.key == _VERSION_KEY).values(value=str(latest))
            )
    if found > 0:  # said once the upgrade is committed; a fresh database is created silently
        print(
            f"sweeper: upgraded the schema of {label} from version {found} to {latest}",
            file=log or sys.stderr,
        )
    return latest
