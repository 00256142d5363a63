"""The store: sweeps, trials and metrics in SQLite or PostgreSQL, the one source of truth.

from sweeper.store import open_store
with open_store("postgresql://user:pw@db:5432/sweeper") as store: ...
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from sweeper.store.base import (
    BatchAbandoned,
    InvalidTransitionError,
    Lease,
    LeaseCall,
    SchemaVersionError,
    Store,
    StoreError,
    TrialCall,
    TrialDraft,
    TrialNotFoundError,
)
from sweeper.store.engine import build_engine, mask, resolve_url
from sweeper.store.migrations import MIGRATIONS, Migration, migrate

__all__ = [
    "BatchAbandoned",
    "InvalidTransitionError",
    "Lease",
    "LeaseCall",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "TrialCall",
    "TrialDraft",
    "TrialNotFoundError",
    "open_store",
]


def open_store(
    url: str | None = None, *, migrations: Sequence[Migration] = MIGRATIONS, create: bool = True
) -> Store:
    """Open (creating or upgrading its schema when needed) the store at ``url``.

    ``None`` means ``./.sweeper/sweeper.db``. A plain file path or ``sqlite:///path`` opens a
    SQLite file; ``postgresql://`` or ``postgres://`` a PostgreSQL database (psycopg 3).
    ``migrations`` is the list of schema steps; tests replace it to prove upgrades. ``create=False``
    refuses a SQLite file that is not there (see :func:`~sweeper.store.engine.resolve_url`), and a
    database that holds no store.
    Raises :class:`StoreError` when the URL is unusable or the database cannot be reached.
    """
    from sweeper.store.sql import SqlStore

    resolved = resolve_url(url, create=create)
    label = mask(resolved.set(drivername=resolved.get_backend_name()))  # no driver name in messages
    engine = build_engine(resolved)
    try:
        migrate(engine, migrations, label=label, create=create)
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        for secret in (resolved.password, resolved.query.get("password")):
            if isinstance(secret, str) and secret:  # a whole word: a password "p" must leave "port" be
                reason = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", reason)
        raise StoreError(f"cannot open store {label}: {reason}") from None
    except BaseException:
        engine.dispose()
        raise
    return SqlStore(engine, label=label)
