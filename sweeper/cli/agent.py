"""``sweeper agent SWEEP_ID``: run a sweep's trials on this machine, one per GPU or slot."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

from sweeper.cli.common import (
    check_agent_program,
    check_agent_trackers,
    chosen_gpus,
    chosen_target,
    connect_or_fail,
    coordinator_option,
    db_option,
    gpus_option,
    gpus_per_trial_option,
    grace_option,
    max_failures_option,
    max_log_option,
    store_label,
    sweep_id_argument,
    token_option,
    trials_per_gpu_option,
)
from sweeper.cli.interrupt import EXIT_INTERRUPTED, run_until_done_or_interrupted

START_WAIT = 60.0  # seconds an agent waits for its coordinator to answer at start
_START_BACKOFF = 0.5


@click.command()
@sweep_id_argument()
@click.option(
    "--count", default=None, type=click.IntRange(min=1), help="Run at most this many trials, then exit."
)
@gpus_option
@trials_per_gpu_option
@gpus_per_trial_option
@click.option(
    "--slots",
    default=None,
    type=click.IntRange(min=1),
    help="Trials to run at once without GPUs [default: 1].",
)
@coordinator_option
@token_option
@db_option
@grace_option
@max_failures_option
@max_log_option
@click.option(
    "--max-backoff",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Longest wait between retries while the coordinator is unreachable.",
)
def agent(
    sweep_id: str,
    count: int | None,
    gpus: str | None,
    trials_per_gpu: int | None,
    gpus_per_trial: int | None,
    slots: int | None,
    coordinator_url: str | None,
    token: str | None,
    db_url: str | None,
    grace: float,
    max_failures: int,
    max_log_bytes: int,
    max_backoff: float,
) -> None:
    """Run trials of SWEEP_ID here until the sweep is done.

    Exits 0 with one line saying why once the sweep is finished, stopped or cancelled, or
    --count trials have run; exits 1 once --max-failures trials in a row have failed. While the
    coordinator is unreachable, trials keep running and their reports wait on disk. Ctrl-C,
    SIGTERM or SIGHUP (the terminal went away) stops the running trials (SIGTERM to each trial's
    process group, SIGKILL after --grace) and exits 130; those trials are recorded as lost, and
    their configurations run again.
    """
    from sweeper.client import AuthenticationError
    from sweeper.local import LocalAgents
    from sweeper.protocol import SweepNotFoundError
    from sweeper.trials import SweepState

    gpu_list = chosen_gpus(gpus, trials_per_gpu, gpus_per_trial, slots, "--slots")
    coordinator_url, db_url = chosen_target(coordinator_url, db_url)
    logging.basicConfig(level=logging.WARNING, format="sweeper agent: %(message)s")
    client = connect_or_fail(coordinator_url, token, db_url, existing=True)
    try:
        sweep, spec = _check_sweep(client, sweep_id, coordinator_url)
        if sweep.state in (SweepState.RUNNING, SweepState.PAUSED):  # else it says the sweep is over
            check_agent_program(spec, sweep_id)
            check_agent_trackers(spec, sweep_id)
    except KeyboardInterrupt:  # while waiting for the coordinator or a tracker: no trial runs yet
        sys.exit(EXIT_INTERRUPTED)

    from sweeper.cli.report import Progress, stdout_may_be_gone

    agents = LocalAgents(
        client,
        sweep_id,
        agents=slots or 1,
        gpus=gpu_list,
        count=count,
        grace_period=grace,
        on_event=Progress(spec).on_event,
        max_backoff=max_backoff,
        max_failures=max_failures,
        max_log_bytes=max_log_bytes,
    )
    at_once = len(gpu_list) if gpu_list else slots or 1
    with stdout_may_be_gone():
        click.echo(f"agent on sweep {sweep_id}: {at_once} trial(s) at a time")
    try:
        reasons, interrupted = run_until_done_or_interrupted(agents, grace)
    except (AuthenticationError, SweepNotFoundError) as exc:  # the coordinator changed under the agent
        raise click.ClickException(_refused_midway(exc, sweep_id, coordinator_url)) from None
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if agents.gave_up:
        click.echo(f"error: {reasons[0]}", err=True)
        sys.exit(1)
    with stdout_may_be_gone():
        click.echo(_exit_line(reasons))


def _refused_midway(exc: Exception, sweep_id: str, coordinator: str | None) -> str:
    """Why a coordinator that took this agent at its start refuses it now: it was restarted with
    another token, or on another database (or the sweep was deleted)."""
    where = coordinator or "the store"
    if isinstance(exc, PermissionError):  # the token refused (AuthenticationError)
        return (
            f"the coordinator at {where} no longer takes this agent's token (restarted with another "
            f"one?): {exc}"
        )
    return (
        f"the coordinator at {where} no longer knows sweep {sweep_id} (restarted on another database?): {exc}"
    )


def _check_sweep(client: Any, sweep_id: str, coordinator: str | None) -> tuple[Any, Any]:
    """The sweep and its spec; a clear error for an unknown sweep, a refused token or no coordinator."""
    from sweeper.agents.reporting import backoff_delay
    from sweeper.client import CoordinatorError, WrongSchemeError
    from sweeper.protocol import SweepNotFoundError

    store = store_label(client)
    where = coordinator or (f"store {store}" if store else "the local store")
    # Agents started with their server (a job script, a Slurm array) may start first: it is
    # waited for, said once, for START_WAIT seconds.
    deadline = time.monotonic() + START_WAIT
    attempt = 0
    while True:
        attempt += 1
        try:
            return client.get_sweep(sweep_id), client.spec_of(sweep_id)
        except SweepNotFoundError:
            raise click.ClickException(
                f"no sweep {sweep_id!r} at {where} (sweeper status lists them)"
            ) from None
        except PermissionError as exc:
            raise click.ClickException(str(exc)) from None
        except CoordinatorError as exc:  # refused: a malformed id, an untrusted certificate, ...
            raise click.ClickException(f"the coordinator at {where} refused: {exc}") from None
        except OSError as exc:
            if isinstance(exc, WrongSchemeError) and exc.certain:
                raise click.ClickException(str(exc)) from None
            delay = backoff_delay(attempt, base=_START_BACKOFF, cap=4.0)
            if time.monotonic() + delay > deadline:
                hint = "" if isinstance(exc, WrongSchemeError) else "; is `sweeper server` running there?"
                raise click.ClickException(
                    f"cannot reach the coordinator at {where} (tried for {START_WAIT:g}s): {exc}{hint}"
                ) from None
            if attempt == 1:
                click.echo(
                    f"cannot reach the coordinator at {where} yet ({exc}); trying for {START_WAIT:g}s",
                    err=True,
                )
            time.sleep(delay)


def _exit_line(reasons: list[str]) -> str:
    # Every slot says why it stopped; the sweep's own reason beats "count reached" when both occur.
    if not reasons:
        return "no agent ran"
    for reason in reasons:
        if "count" not in reason:
            return reason
    return reasons[0]
