"""Store URLs and the SQLAlchemy engines behind them (SQLite files and PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError

from sweeper.redact import redact_urls
from sweeper.store.base import StoreError
from sweeper.store.checkpoint import AUTOCHECKPOINT_PAGES

DEFAULT_PATH = Path(".sweeper") / "sweeper.db"
BUSY_TIMEOUT_S = 30.0
# A pooled PostgreSQL connection idle longer than this is pinged before use.
PING_AFTER_IDLE_S = 5.0
# Execution option for connections that only read: SQLite then opens a plain (deferred)
# transaction instead of taking the write lock with BEGIN IMMEDIATE.
READ_ONLY = {"sweeper_read_only": True}

_SUPPORTED = "sqlite:///path/to/file.db, a plain file path, or postgresql://user:password@host:port/database"


def mask(url: str | URL) -> str:
    """The URL with any password (its own, or one in its query) replaced by ***, for messages."""
    return redact_urls(url.render_as_string(hide_password=True) if isinstance(url, URL) else url)


_MAKES_ONE = "`sweeper run FILE` or `sweeper sweep FILE` makes one"


def resolve_url(url: str | None, *, create: bool = True) -> URL:
    """Turn what a person typed (or nothing) into a SQLAlchemy URL with the driver we use.

    ``create=False``: a SQLite store that is not there is an error, for the callers that work on
    sweeps already made (a misspelt path would otherwise make a new, empty store)."""
    if url is None:
        path = Path.cwd() / DEFAULT_PATH
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise StoreError(
                f"no sweeper store in {Path.cwd()} (no {DEFAULT_PATH}): {_MAKES_ONE} here; "
                "or pass --db URL, or --coordinator URL"
            )
        return URL.create("sqlite", database=str(path))
    text = url.strip()
    if not text:
        raise StoreError(f"empty store URL: use {_SUPPORTED}")
    if "://" not in text:
        return _sqlite_file(text, given=url, create=create)
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise StoreError(f"cannot read store URL {mask(text)!r} ({exc}): use {_SUPPORTED}") from None
    if parsed.host and "@" in parsed.host:  # the part after the password's own @ is taken for the host
        raise StoreError(
            f"cannot read store URL {mask(text)!r}: its password holds an '@'; write each one as %40 "
            "(and ':' as %3A, '/' as %2F)"
        )
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return _sqlite_file(parsed.database or "", given=url, create=create)
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend in ("postgresql", "postgres", "sqlite"):
        raise StoreError(
            f"store URL {mask(parsed)!r}: sweeper picks the driver itself (psycopg 3 for PostgreSQL); "
            f"write it without '+{driver}': {backend}://..."
        )
    raise StoreError(f"unsupported store URL {mask(parsed)!r}: use {_SUPPORTED}")


def _sqlite_file(path: str, *, given: str, create: bool) -> URL:
    if path in ("", ":memory:") or path.startswith("file:"):
        # Several processes must share the store, and an in-memory database is private to one.
        raise StoreError(f"store URL {given!r} is not a file: SQLite stores need a file path")
    file = Path(path).expanduser()
    if not file.parent.is_dir():
        raise StoreError(
            f"cannot open SQLite store {str(file)!r}: folder {str(file.parent)!r} does not exist"
        )
    if not create and not file.is_file():
        raise StoreError(
            f"no store at {file.resolve()} (--db or SWEEPER_DB: {given}): check the path; {_MAKES_ONE}"
        )
    return URL.create("sqlite", database=str(file))


def build_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    try:
        engine = create_engine(url, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 10})
    except (NoSuchModuleError, ImportError):
        raise StoreError(
            f"cannot use {mask(url)!r}: PostgreSQL needs psycopg 3 (pip install 'sweeper[postgres]')"
        ) from None
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection before use only when it sat idle for a while.

    ``pool_pre_ping`` would cost a round trip on every transaction. A connection in steady use
    that the database dropped fails its next statement instead: the caller gets a StoreError (503
    to an agent, which retries), and SQLAlchemy, seeing a disconnect, discards every connection the
    pool opened before it, so the retry gets a fresh one."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # psycopg's error for a dropped connection, or any other
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("the connection did not answer a ping")


def _sqlite_engine(url: URL) -> Engine:
    # A pool per process; each connection may be used by any thread the pool hands it to.
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
        cursor.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode, and far fewer fsyncs
        cursor.execute("PRAGMA foreign_keys = ON")
        # The log is copied back by a thread of its own (sweeper.store.checkpoint), not by commits.
        cursor.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front, so a read-decide-insert cannot
        # interleave with another process's; it waits up to the busy timeout instead.
        if conn.get_execution_options().get("sweeper_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
