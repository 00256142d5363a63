"""``connect()``: the one way to reach a coordinator, remote or embedded.

>>> coordinator = connect("https://sweeps.example.org:8765", token="...")  # HttpCoordinator
>>> coordinator = connect(db="sqlite:///sweeps.db")                          # embedded Coordinator

Either one's ``close()`` (or a ``with`` block) lets go of its connections, and of the store
``connect`` opened for an embedded one.
"""

from __future__ import annotations

import os

from sweeper.protocol import CoordinatorService


def connect(
    coordinator: str | None = None,
    *,
    token: str | None = None,
    db: str | None = None,
    ca_file: str | None = None,
    timeout: float = 10.0,
    create: bool = True,
) -> CoordinatorService:
    """A coordinator at URL ``coordinator`` (or env SWEEPER_COORDINATOR) over HTTP; without a URL, an
    embedded one on the store ``db`` (or env SWEEPER_DB, or ``./.sweeper/sweeper.db``).
    The token comes from ``token`` or env SWEEPER_TOKEN. Raises ``StoreError`` when the store
    cannot be opened (``create=False``: also when a SQLite store is not there); an HTTP
    coordinator is not contacted until the first call. A ``db`` given wins over the environment's
    coordinator; ``coordinator`` and ``db`` both given is a ValueError."""
    if coordinator and db:
        raise ValueError("give either coordinator (a server's URL) or db (a store), not both")
    url = coordinator or (None if db else os.environ.get("SWEEPER_COORDINATOR")) or None
    if url:
        from sweeper.client import HttpCoordinator

        token = token or os.environ.get("SWEEPER_TOKEN") or None
        return HttpCoordinator(url, token=token, timeout=timeout, ca_file=ca_file)
    # The embedded parts need SQLAlchemy; an agent that only talks HTTP never imports them.
    from sweeper.coordinator import Coordinator
    from sweeper.store import open_store

    return Coordinator(open_store(db or os.environ.get("SWEEPER_DB") or None, create=create))
