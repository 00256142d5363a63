"""``sweeper server``: the coordinator as an HTTP service (FastAPI on uvicorn).

Needs the ``server`` extra. Agents talk to it through :class:`sweeper.client.HttpCoordinator`,
which needs nothing beyond the standard library.
"""

from __future__ import annotations

from sweeper.server.app import create_app
from sweeper.server.main import ServerOptions, UnsafeBindError, serve

__all__ = ["ServerOptions", "UnsafeBindError", "create_app", "serve"]
