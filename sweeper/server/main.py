"""Starting the service: the safety checks, the restart rule for leases, and uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass

from sweeper.coordinator import DEFAULT_LEASE_SECONDS, Coordinator
from sweeper.integrations.sweep import SweepRecords
from sweeper.server.app import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, create_app
from sweeper.server.fast import AgentRoutes
from sweeper.store import Store, StoreError
from sweeper.tokens import token_problem


class UnsafeBindError(Exception):
    """Listening where others can reach the server, with nothing to keep them out."""


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    insecure: bool = False
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    log_level: str = "info"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class TlsFilesError(ValueError):
    """The TLS files given cannot serve: one without the other, or not a certificate and its key."""


def check_tls(options: ServerOptions) -> None:
    """Both TLS files or neither, and the certificate and its key load as the server will load
    them: checked before the store is touched, as OpenSSL's own message ("PEM lib") names neither."""
    certfile, keyfile = options.ssl_certfile, options.ssl_keyfile
    if bool(certfile) != bool(keyfile):
        raise TlsFilesError("TLS needs both --ssl-certfile and --ssl-keyfile")
    if certfile and keyfile:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            raise TlsFilesError(
                f"--ssl-certfile {certfile} and --ssl-keyfile {keyfile}: not a PEM certificate and the "
                f"private key that goes with it ({exc.reason or exc})"
            ) from None


def check_bind(options: ServerOptions) -> None:
    if options.token is not None:
        check_token(options.token)
    if options.token or options.insecure or is_loopback(options.host):
        return
    raise UnsafeBindError(
        f"refusing to listen on {options.host} without a token: anyone who can reach it could run "
        "commands on your agents. Pass --token (or set SWEEPER_TOKEN) and give agents the same token, "
        "or bind to 127.0.0.1, or pass --insecure on a network you trust"
    )


def check_token(token: str) -> None:
    """A token clients can send in an HTTP header. Another one starts a server that no agent can
    reach (an HTTP client cannot encode it, or it guards nothing)."""
    if (problem := token_problem(token)) is not None:
        raise UnsafeBindError(problem)


def revive_leases(store: Store, lease_seconds: float, *, now: float) -> int:
    """A restarted coordinator gives every running trial one lease period from now: agents that
    kept working while it was down find their leases held, instead of their trials lost."""
    return len(store.extend_running_leases(expires_at=now + lease_seconds))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so ``--port 0`` gives a free port we can print."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class LeaseExpiry:
    """Marks trials lost when their agents go silent, also when no agent is left to ask for work."""

    def __init__(self, coordinator: Coordinator, every: float) -> None:
        self._coordinator = coordinator
        self._every = max(every, 0.5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-expiry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            try:
                self._coordinator.expire_leases()
            except StoreError as exc:  # the store is busy or away: the next pass catches up
                logging.getLogger(__name__).warning("lease expiry pass failed (%s); trying again", exc)
            except Exception:  # anything else is a fault: its traceback says where
                logging.getLogger(__name__).warning("lease expiry pass failed", exc_info=True)


def serve(store: Store, options: ServerOptions) -> None:
    """Run until interrupted. Prints one line, ``sweeper server listening on URL``, once it accepts."""
    import uvicorn

    check_bind(options)
    check_tls(options)
    revived = revive_leases(store, options.lease_seconds, now=time.time())
    # The sweep-level tracker records (MLflow parent run, W&B sweep run), kept off the request path.
    records = SweepRecords()
    coordinator = Coordinator(store, lease_seconds=options.lease_seconds, on_sweep_changed=[records.changed])
    records.start(coordinator)
    expiry = LeaseExpiry(coordinator, every=options.lease_seconds / 2)
    expiry.start()
    app = create_app(
        coordinator,
        token=options.token,
        max_body_bytes=options.max_body_bytes,
        max_batch=options.max_batch,
        on_shutdown=records.close,  # SIGTERM ends the process right after uvicorn's shutdown
    )
    routes = AgentRoutes(
        app,
        coordinator,
        token=options.token,
        max_body_bytes=options.max_body_bytes,
        max_batch=options.max_batch,
    )
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        routes,
        ssl_certfile=options.ssl_certfile,
        ssl_keyfile=options.ssl_keyfile,
        log_level=options.log_level,
        # uvicorn builds each request's access line before the logger drops it: below info, no line.
        access_log=uvicorn.config.LOG_LEVELS[options.log_level] <= logging.INFO,
        timeout_graceful_shutdown=5,
    )
    config.load()  # a missing or unreadable certificate fails here, before the "listening" line
    server = uvicorn.Server(config)
    scheme = "https" if options.ssl_certfile else "http"
    shown = f"[{options.host}]" if ":" in options.host else options.host

    if revived:
        print(f"sweeper server: {revived} running trial(s) keep their leases", file=sys.stderr, flush=True)
    # The socket already listens: a client that connects now waits in its backlog until uvicorn accepts.
    print(f"sweeper server listening on {scheme}://{shown}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        routes.close()  # before the caller closes the store
        expiry.stop()
        sock.close()
        records.close()
