"""Start a real ``sweeper server`` subprocess on a free port, and talk to it.

with serving(sqlite_store_url, tmp_path) as server:
    client = server.client()
    ...
    server.kill()                      # SIGKILL, as a crash would
    restarted = server.restart()       # same database, same port
"""

from __future__ import annotations

import itertools
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeper.client import HttpCoordinator

TOKEN = "test-token-5f3a9c"
QUIET = ("--log-level", "warning")  # a server that logs no request
_READY = "sweeper server listening on "
_COUNTER = itertools.count(1)
_START_TIMEOUT = 60.0


@dataclass
class ServerProcess:
    url: str
    db_url: str
    workdir: Path
    process: subprocess.Popen[str]
    token: str | None
    args: tuple[str, ...]
    log_path: Path
    ca_file: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def client(self, *, token: str | None | bool = True, timeout: float = 10.0) -> HttpCoordinator:
        """A client with the server's token (``token=False`` or None: none; a string: that one)."""
        chosen = self.token if token is True else (None if token is False else token)
        return HttpCoordinator(self.url, token=chosen, timeout=timeout, ca_file=self.ca_file)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        """Everything the server wrote (its own lines and uvicorn's log)."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerProcess:
        """Kill this server if it still runs and start another on the same port and database."""
        self.kill()
        return start_server(
            self.db_url,
            self.workdir,
            token=self.token,
            port=self.port,
            extra_args=self.args,
            env=self.env,
            ca_file=self.ca_file,
        )


def server_command(
    db_url: str, *, port: int, host: str = "127.0.0.1", extra_args: Sequence[str] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sweeper",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--db",
        db_url,
        *extra_args,
    ]


def without_sweeper_settings() -> dict[str, str]:
    """This process's environment without SWEEPER_* variables: a server or agent started with it
    takes its settings from its arguments only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}


def agent_argv(url: str, sweep_id: str, *args: str) -> list[str]:
    """``sweeper agent SWEEP_ID`` on the server at ``url``, with the tests' token."""
    return [sys.executable, "-m", "sweeper", "agent", sweep_id, "--coordinator", url, "--token", TOKEN, *args]


def start_server(
    db_url: str,
    workdir: Path,
    *,
    token: str | None = TOKEN,
    port: int = 0,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ca_file: str | None = None,
) -> ServerProcess:
    """Start ``sweeper server`` (token through env SWEEPER_TOKEN) and wait until /health answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    child_env = without_sweeper_settings()
    child_env.update(env or {})
    if token:
        child_env["SWEEPER_TOKEN"] = token
    log_path = workdir / f"server-{next(_COUNTER)}.log"
    with open(log_path, "w") as log:  # stdout and stderr both: uvicorn's access log goes to stdout
        process = subprocess.Popen(
            server_command(db_url, port=port, extra_args=extra_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env,
            start_new_session=True,
        )
    server = ServerProcess(
        "", db_url, workdir, process, token, tuple(extra_args), log_path, ca_file, dict(env or {})
    )
    server.url = _wait_for_url(server)
    wait_healthy(server)
    return server


def _wait_for_url(server: ServerProcess) -> str:
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        for line in server.log().splitlines():
            if line.startswith(_READY):
                return line[len(_READY) :].strip()
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"sweeper server did not start:\n{server.log()}")
        time.sleep(0.05)


def wait_healthy(server: ServerProcess) -> None:
    """Poll /health until it answers 200 (the socket listens before uvicorn has started)."""
    context = ssl.create_default_context(cafile=server.ca_file) if server.url.startswith("https") else None
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/api/v1/health", timeout=5, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sweeper server never became healthy:\n{server.log()}") from None
        time.sleep(0.05)


@contextmanager
def serving(db_url: str, workdir: Path, **kwargs: object) -> Iterator[ServerProcess]:
    """A server for the length of a ``with`` block; stopped (SIGTERM, then SIGKILL) afterwards."""
    server = start_server(db_url, workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate, key). The certificate is
    its own CA, so clients pass it as ``ca_file``."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        _certificate_with_cryptography(cert, key)
    except ImportError:
        command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1".split()
        command += [
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ]
        subprocess.run(command, check=True, capture_output=True)
    return cert, key


def _certificate_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def one_trial_agent(
    server: ServerProcess,
    folder: Path,
    script: str,
    *,
    name: str,
    events: list[object],
    client_timeout: float,
    finish_timeout: float,
) -> tuple[str, Any]:
    """A new one-point grid sweep of ``script`` (written to ``folder/train.py``) on ``server``, and
    an agent in this process, working in ``folder``, that runs its one trial with quick reports
    and short backoffs and puts its events in ``events``; not started."""
    from sweeper.agents.agent import Agent

    from sweeper.protocol import AgentInfo
    from sweeper.spec import parse_sweep

    program = folder / "train.py"
    program.write_text(script)
    sweep = {"method": "grid", "program": str(program), "parameters": {"x": {"values": [1]}}}
    sweep_id = server.client().create_sweep(parse_sweep(sweep)).id
    agent = Agent(
        server.client(timeout=client_timeout),
        sweep_id,
        info=AgentInfo(name=name, host="localhost"),
        workdir=folder,
        count=1,
        report_interval=0.05,
        heartbeat_interval=0.5,
        max_backoff=0.5,
        finish_timeout=finish_timeout,
        on_event=events.append,
    )
    return sweep_id, agent


def e2e_grid(server: ServerProcess, parameters: dict[str, Any]) -> str:
    """A new grid sweep on ``server`` of scripts/e2e_trial.py over ``parameters``, maximizing its score."""
    from sweeper.spec import parse_sweep

    raw = {
        "method": "grid",
        "program": str(Path(__file__).parent / "scripts" / "e2e_trial.py"),
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": parameters,
    }
    return server.client().create_sweep(parse_sweep(raw)).id
