"""``sweeper run FILE``: create a sweep and run it with local agents until it is done."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from sweeper.cli.common import (
    SpecFileError,
    agent_place,
    chosen_gpus,
    db_option,
    gpus_option,
    gpus_per_trial_option,
    grace_option,
    load_spec,
    max_failures_option,
    max_log_option,
    open_store_or_fail,
    resolve_program,
    trials_per_gpu_option,
)
from sweeper.cli.interrupt import EXIT_INTERRUPTED, run_until_done_or_interrupted
from sweeper.cli.report import Progress, print_summary, stdout_may_be_gone
from sweeper.integrations.cli import mlflow_option, wandb_option, with_trackers
from sweeper.integrations.settings import with_experiment_named
from sweeper.spec import Problem, SpecError, SweepSpec
from sweeper.trials import Sweep, SweepState, TrialState


@click.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option(
    "--agents",
    "n_agents",
    default=None,
    type=click.IntRange(min=1),
    help="Local agents, each running one trial at a time [default: 1].",
)
@gpus_option
@trials_per_gpu_option
@gpus_per_trial_option
@click.option(
    "--count",
    default=None,
    type=click.IntRange(min=1),
    help="Run at most this many trials in total, then stop.",
)
@grace_option
@max_failures_option
@max_log_option
@db_option
@mlflow_option
@wandb_option
def run(
    sweep_file: str,
    n_agents: int | None,
    gpus: str | None,
    trials_per_gpu: int | None,
    gpus_per_trial: int | None,
    count: int | None,
    grace: float,
    max_failures: int,
    max_log_bytes: int,
    db_url: str | None,
    mlflow_uri: str | None = None,
    wandb_on: bool = False,
) -> None:
    """Create a sweep from SWEEP_FILE and run it here with local agents.

    Progress is printed as trials start and end; the best trial is shown at the end.
    Ctrl-C stops every running trial (SIGTERM to its process group, SIGKILL after --grace)
    and records it as lost: its configuration runs again when the sweep goes on. Exits 1
    when no trial could finish: every agent gave up after --max-failures failed trials in a
    row, or every trial failed.
    """
    from sweeper.coordinator import Coordinator
    from sweeper.local import LocalAgents
    from sweeper.spec import describe

    gpu_list = chosen_gpus(gpus, trials_per_gpu, gpus_per_trial, n_agents, "--agents")
    spec = load_spec(sweep_file, lambda raw: with_experiment_named(with_trackers(raw, mlflow_uri, wandb_on)))
    program = resolve_program(spec, sweep_file)
    check_trackers(spec, sweep_file)
    store = open_store_or_fail(db_url)
    coordinator = Coordinator(store)
    sweep = coordinator.create_sweep(spec)
    stopped_before = _stopped_sweeps_like(coordinator, sweep)
    click.echo(f"sweep {sweep.id}: {describe(spec)}")
    # How agents here would take a stopped sweep up again, with this command's parallelism.
    place = agent_place(spec, sweep_file, coordinator, db_url)
    parallel = _parallel_flags(gpus, trials_per_gpu, gpus_per_trial, n_agents)
    if stopped_before:  # a new sweep starts over; going on with the last one may be what was meant
        more = f" (and {len(stopped_before) - 1} older)" if len(stopped_before) > 1 else ""
        click.echo(
            f"note: sweep {stopped_before[0]}{more}, made from the same sweep configuration, was stopped "
            f"before it was done; to go on with it instead: {_going_on(stopped_before[0], place, parallel)}",
            err=True,
        )
    # A grid ends when every combination has run, a PBT population when every member has.
    if spec.method not in ("grid", "pbt") and spec.run_cap is None and count is None:
        click.echo("note: this search has no end of its own; pass --count N or set run_cap (Ctrl-C stops it)")
    slots = len(gpu_list) if gpu_list else n_agents or 1
    if spec.options.pbt is not None and slots < (population := spec.options.pbt.population):
        # A member copies only from members training beside it: in waves, PBT never exploits.
        if gpus_per_trial and gpus_per_trial > 1:
            more = f"--gpus with {population * gpus_per_trial} GPUs"
        elif gpus_used := len(set(gpu_list or ())):
            more = f"--trials-per-gpu {-(-population // gpus_used)}"
        else:
            more = f"--agents {population}"
        click.echo(
            f"note: a population of {population} with {slots} trial(s) at a time trains in waves, and a "
            f"member only copies from members training beside it; pass {more} (or start more agents "
            "on this sweep) so the population trains together"
        )

    progress = Progress(spec)
    agents = LocalAgents(
        coordinator,
        sweep.id,
        agents=n_agents or 1,
        gpus=gpu_list,
        count=count,
        program_override=program,
        grace_period=grace,
        on_event=progress.on_event,
        max_failures=max_failures,
        max_log_bytes=max_log_bytes,
        stop_when_given_up=True,
    )
    reasons, interrupted = run_until_done_or_interrupted(agents, grace)
    # This command owns the sweep: it leaves none running behind (`sweeper resume` takes it up again).
    can_go_on = False  # stopped here, not done: `sweeper resume` goes on with it
    if interrupted or agents.gave_up:  # (agents that gave up stopped it already: a stopped one stays)
        can_go_on = not coordinator.get_sweep(sweep.id).state.is_terminal
        if can_go_on:
            coordinator.set_sweep_state(sweep.id, SweepState.STOPPED)
    if interrupted:
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP): the exit code still says it
            print_summary(coordinator, sweep.id)
            if can_go_on:
                click.echo(
                    f"to go on (the trials cut short run again): {_going_on(sweep.id, place, parallel)}",
                    err=True,
                )
        sys.exit(EXIT_INTERRUPTED)
    with stdout_may_be_gone():
        if reasons and not agents.gave_up:
            click.echo(reasons[0])
        print_summary(coordinator, sweep.id)
    if agents.gave_up:
        click.echo(f"error: {reasons[0]}", err=True)
        if can_go_on:
            click.echo(
                "once it is fixed (the configurations that failed run again): "
                + _going_on(sweep.id, place, parallel),
                err=True,
            )
        sys.exit(1)
    states = {trial.state for trial in coordinator.trials(sweep.id)}
    db = place[1]
    if TrialState.FAILED in states and TrialState.FINISHED not in states:
        click.echo(
            f"error: no trial finished; to see why: {_typed(place, f'sweeper trials {sweep.id}{db}')}",
            err=True,
        )
        sys.exit(1)
    if count is not None and coordinator.get_sweep(sweep.id).state is SweepState.RUNNING:
        # --count reached with more to run: the sweep waits for agents
        click.echo(f"more to run: {_typed(place, f'sweeper agent {sweep.id}{db}{parallel}')}", err=True)


def check_trackers(spec: SweepSpec, sweep_file: str) -> None:
    """Refuse, before anything runs, a sweep whose trackers cannot be set up here: the logging it
    asks for would be off for every trial."""
    from sweeper.integrations.session import sweep_tracker_problems

    problems = sweep_tracker_problems(spec)
    if problems:
        advice = "fix the integrations block (or --mlflow, --wandb), or leave it out to run without logging"
        raise SpecFileError(sweep_file, SpecError([Problem("", p) for p in [*problems, advice]]))


def _stopped_sweeps_like(coordinator: Any, new: Sweep) -> list[str]:
    """The ids of the store's stopped sweeps made from the same sweep configuration as ``new``
    (the same keys and values, as the store keeps them), newest first."""
    from sweeper.store.rows import config_key

    same = config_key(new.spec)
    return [
        s.id
        for s in coordinator.list_sweeps()
        if s.state is SweepState.STOPPED and config_key(s.spec) == same
    ]


def _parallel_flags(
    gpus: str | None, trials_per_gpu: int | None, gpus_per_trial: int | None, n_agents: int | None
) -> str:
    """``sweeper agent``'s options for as many trials at once as ``sweeper run`` was given."""
    if gpus:
        per_gpu = f" --trials-per-gpu {trials_per_gpu}" if trials_per_gpu else ""
        per_trial = f" --gpus-per-trial {gpus_per_trial}" if gpus_per_trial else ""
        return f" --gpus {gpus}{per_gpu}{per_trial}"
    return f" --slots {n_agents}" if n_agents and n_agents > 1 else ""


def _going_on(sweep_id: str, place: tuple[str, str], parallel: str) -> str:
    """The commands that take a stopped sweep up again (:func:`agent_place`); running its file
    again would make a new sweep and start over."""
    db = place[1]
    return _typed(place, f"sweeper resume {sweep_id}{db}", f"sweeper agent {sweep_id}{db}{parallel}")


def _typed(place: tuple[str, str], *commands: str) -> str:
    """``commands`` as one line to paste into a shell, run in the folder of ``place`` if it has one."""
    folder = place[0]
    return " && ".join([f"cd {folder}", *commands] if folder else commands)
