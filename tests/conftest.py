"""Shared fixtures. Store fixtures: a SQLite file per test; PostgreSQL from SWEEPER_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

# A shell starts background jobs with SIGINT ignored, and child processes inherit that: the tests
# that press Ctrl-C on a command would wait forever. Exec resets a handled signal to its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist, nothing to do
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: a worker per CPU this process may use, at least 2 and at most 8 (or what
    PYTEST_XDIST_AUTO_NUM_WORKERS says). Half of a worker's time goes to waiting on the processes
    its tests start, so two share one CPU well; past 8 the longest test file, which one worker
    runs whole, bounds the run anyway."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own reading of it
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, min(8, usable))


# --- store ------------------------------------------------------------------


@pytest.fixture
def sqlite_store_url(tmp_path: Path) -> str:
    """A SQLite store file of its own for each test."""
    return f"sqlite:///{tmp_path / 'sweeper.db'}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_url() -> URL:
    """The server named by SWEEPER_TEST_POSTGRES_URL; skipped when unset, except under CI."""
    value = os.environ.get("SWEEPER_TEST_POSTGRES_URL", "").strip()
    if not value:
        message = "SWEEPER_TEST_POSTGRES_URL is not set (start a server with: sudo .ci/start-postgres.sh)"
        if _in_ci():
            pytest.fail(f"{message}; CI must run the PostgreSQL tests, not skip them", pytrace=False)
        pytest.skip(message)
    return make_url(value).set(drivername="postgresql+psycopg")


@pytest.fixture(scope="module")
def postgres_database(postgres_url: URL) -> Iterator[URL]:
    """A fresh database for one test module, created through the given URL and dropped afterwards."""
    name = f"sweeper_t_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield postgres_url.set(database=name)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def postgres_store_url(postgres_database: URL) -> Iterator[str]:
    """An empty schema of its own for each test, inside the module's database."""
    schema = f"t_{secrets.token_hex(4)}"
    admin = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = postgres_database.set(query={"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


# --- trackers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``mlflow server`` on 127.0.0.1 for the tests of one module."""
    pytest.importorskip("mlflow")
    from trackers_support import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()
