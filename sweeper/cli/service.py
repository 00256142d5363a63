"""``sweeper server``, ``sweeper sweep`` and ``sweeper stop|pause|resume|cancel``.

Every command but ``server`` works on a remote coordinator (``--coordinator URL``) or, without
one, on the store ``--db`` directly: both go through :func:`sweeper.connect.connect`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from sweeper.cli.common import (
    agent_place,
    check_program_given,
    chosen_target,
    connect_or_fail,
    coordinator_errors,
    coordinator_option,
    db_option,
    lacks_program,
    load_spec,
    open_store_or_fail,
    store_shown,
    sweep_id_argument,
    token_option,
)
from sweeper.cli.interrupt import EXIT_INTERRUPTED
from sweeper.trials import SweepState

if TYPE_CHECKING:
    from sweeper.spec import SweepSpec


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free one."
)
@db_option
@click.option(
    "--token", envvar="SWEEPER_TOKEN", default=None, help="Clients must send it [env SWEEPER_TOKEN]."
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback address without a token.")
@click.option(
    "--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this cert."
)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="The certificate's key.")
@click.option(
    "--lease-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="A trial whose agent stays silent this long is lost.",
)
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=click.IntRange(min=1024))
@click.option(
    "--max-batch", default=1000, show_default=True, type=click.IntRange(min=1), help="Points per report."
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def server(
    host: str,
    port: int,
    db_url: str | None,
    token: str | None,
    insecure: bool,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    lease_seconds: float,
    max_body_bytes: int,
    max_batch: int,
    log_level: str,
) -> None:
    """Run the coordinator as an HTTP service for remote agents (Ctrl-C stops it)."""
    try:
        from sweeper.server import ServerOptions, UnsafeBindError, serve
    except ImportError as exc:
        raise click.ClickException(
            f"the server needs the 'server' extra ({exc.name} is missing): pip install 'sweeper[server]'"
        ) from None
    options = ServerOptions(
        host=host,
        port=port,
        token=token or None,
        insecure=insecure,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        lease_seconds=lease_seconds,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
        log_level=log_level,
    )
    try:
        from sweeper.server.main import TlsFilesError, check_bind, check_tls, is_loopback

        check_bind(options)  # before the store is touched
        if options.insecure and not options.token and not is_loopback(options.host):
            click.echo(
                f"warning: listening on {options.host} without a token (--insecure): whoever reaches "
                "this port can create sweeps, and so run commands on your agents",
                err=True,
            )
        if options.token and not ssl_certfile and not is_loopback(options.host):
            click.echo(
                f"warning: listening on {options.host} over plain HTTP: the token, and the configs and "
                "metrics, cross the network readable; give --ssl-certfile/--ssl-keyfile, or put a "
                "TLS proxy in front",
                err=True,
            )
        if bool(ssl_certfile) != bool(ssl_keyfile):
            raise click.UsageError("TLS needs both --ssl-certfile and --ssl-keyfile")
        try:
            check_tls(options)
        except TlsFilesError as exc:
            raise click.ClickException(str(exc)) from None
        store = open_store_or_fail(db_url)
        with store:
            serve(store, options)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down cleanly, then raised it again
        click.echo("sweeper server: stopped", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except UnsafeBindError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the port is taken, the certificate cannot be read, ...
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--project", help="The sweep's W&B project, over the file's `project` (as `wandb sweep --project`)."
)
@click.option(
    "--entity", help="The sweep's W&B entity, over the file's `entity` (as `wandb sweep --entity`)."
)
@coordinator_option
@token_option
@db_option
def sweep(
    file: str,
    project: str | None,
    entity: str | None,
    coordinator_url: str | None,
    token: str | None,
    db_url: str | None,
) -> None:
    """Create a sweep from FILE and print its id; agents then run it (`sweeper agent ID`)."""
    from sweeper.integrations.settings import with_experiment_named

    given = {key: value for key, value in (("project", project), ("entity", entity)) if value}

    def amend(raw: dict[str, Any]) -> dict[str, Any]:
        return with_experiment_named({**raw, **given})

    coordinator_url, db_url = chosen_target(coordinator_url, db_url)
    spec = load_spec(file, amend)
    check_program_given(spec, file, remote=bool(coordinator_url))
    coordinator = connect_or_fail(coordinator_url, token, db_url)
    from sweeper.client import CoordinatorTimeoutError

    with coordinator_errors():
        try:
            created = coordinator.create_sweep(spec)
        except CoordinatorTimeoutError as exc:  # it took the request: it may yet make the sweep
            said = "the server may still make the sweep: look with 'sweeper status' before making it again"
            raise click.ClickException(f"{exc}; {said}") from None
    click.echo(created.id)
    hint = _agent_hint(created.id, spec, file, coordinator_url, coordinator, db_url, bool(token))
    click.echo(f"start agents {hint}", err=True)


def _agent_hint(
    sweep_id: str,
    spec: SweepSpec,
    file: str,
    coordinator_url: str | None,
    coordinator: Any,
    db_url: str | None,
    needs_token: bool,
) -> str:
    """How to start an agent on the sweep just made, from the folder its program is in and with a
    store path that works from there (:func:`agent_place`)."""
    if lacks_program(spec):  # said by check_program_given
        store = store_shown(coordinator)
        db = f", db={store!r}" if store and db_url else ""
        return f"from Python with: sweeper.agent({sweep_id!r}, function=train{db})"
    folder, db = agent_place(spec, file, coordinator, db_url)
    where = f"in {folder} " if folder else ""
    if coordinator_url:
        # The token is not printed (terminals and job logs keep it): where it goes is named.
        token = ", and the server's token in --token or SWEEPER_TOKEN" if needs_token else ""
        return f"{where}with: sweeper agent {sweep_id} --coordinator {coordinator_url}{token}"
    return f"{where}with: sweeper agent {sweep_id}{db}"


def _state_command(name: str, state: SweepState, summary: str) -> click.Command:
    @click.command(name=name, help=summary)
    @sweep_id_argument()
    @coordinator_option
    @token_option
    @db_option
    def command(sweep_id: str, coordinator_url: str | None, token: str | None, db_url: str | None) -> None:
        coordinator = connect_or_fail(coordinator_url, token, db_url, existing=True)
        with coordinator_errors():
            before = coordinator.get_sweep(sweep_id).state
            changed = coordinator.set_sweep_state(sweep_id, state)
        click.echo(f"sweep {changed.id} is {changed.state.value}")
        if before is SweepState.FINISHED and changed.state is SweepState.RUNNING:
            store = store_shown(coordinator) if db_url else None
            where = (
                f" --coordinator {coordinator_url}"
                if coordinator_url
                else (f" --db {store}" if store else "")
            )
            click.echo(
                f"its configurations without a result run again: sweeper agent {sweep_id}{where}", err=True
            )

    return command


stop = _state_command(
    "stop", SweepState.STOPPED, "Stop SWEEP_ID: no new trials; running ones finish. `resume` undoes it."
)
pause = _state_command(
    "pause",
    SweepState.PAUSED,
    "Pause SWEEP_ID: no new trials until `resume`; agents wait; running ones go on.",
)
resume = _state_command(
    "resume",
    SweepState.RUNNING,
    "Resume a paused or stopped SWEEP_ID. Configurations whose every attempt failed get their "
    "retries again (also on a running sweep, or a finished one): run after fixing a broken script.",
)
cancel = _state_command(
    "cancel",
    SweepState.CANCELLED,
    "Cancel SWEEP_ID for good: running trials are stopped at their next heartbeat.",
)
