"""Options and error handling shared by the subcommands."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from sweeper.spec import Problem, SpecError, SweepSpec, load_sweep_file

# A user mistake in a sweep file exits 2 (like click's usage errors); a runtime failure exits 1.
EXIT_SPEC_ERROR = 2
_SAY_WAITING_AFTER = 2.0  # seconds a tracker's check runs before the agent says it waits for it

grace_option = click.option(
    "--grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a stopped trial gets between SIGTERM and SIGKILL.",
)

max_failures_option = click.option(
    "--max-failures",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="Stop an agent once this many trials in a row have failed (0: never).",
)


def _log_limit_bytes(_ctx: click.Context, _param: click.Parameter, value: float) -> int:
    """``--max-log-mb`` in bytes, as the agents take it."""
    from sweeper.agents.logcap import MIN_MAX_BYTES

    limit = int(value * 2**20)
    if 0 < limit < MIN_MAX_BYTES:
        least = MIN_MAX_BYTES / 2**20
        raise click.BadParameter(
            f"expected 0 (no limit) or at least {least:g} ({MIN_MAX_BYTES // 1024} KiB), got {value:g}"
        )
    return limit


max_log_option = click.option(
    "--max-log-mb",
    "max_log_bytes",
    default=100.0,  # logcap.DEFAULT_MAX_BYTES, in MiB (sweeper.agents is not imported to start the CLI)
    show_default=True,
    type=click.FloatRange(min=0),
    callback=_log_limit_bytes,
    help="Cut a trial's stdout.log or stderr.log back once it passes this many MiB, keeping its "
    "start and its latest output (0: never).",
)

db_option = click.option(
    "--db",
    "db_url",
    envvar="SWEEPER_DB",
    default=None,
    metavar="URL",
    help="Store URL: sqlite:///path.db or postgresql://... [default: ./.sweeper/sweeper.db; env SWEEPER_DB]",
)

gpus_option = click.option(
    "--gpus",
    default=None,
    metavar="all|0,1,...",
    help="Run trials on these GPUs, each seeing only its own (CUDA_VISIBLE_DEVICES): one per GPU at a "
    "time, or --trials-per-gpu, or --gpus-per-trial.",
)

trials_per_gpu_option = click.option(
    "--trials-per-gpu",
    default=None,
    type=click.IntRange(min=1),
    help="With --gpus: trials that share each GPU at once, for models too small to fill one [default: 1].",
)

gpus_per_trial_option = click.option(
    "--gpus-per-trial",
    default=None,
    type=click.IntRange(min=1),
    help="With --gpus: GPUs each trial gets, for data-parallel training (torchrun --nproc-per-node=gpu) "
    "[default: 1].",
)


def chosen_gpus(
    gpus: str | None,
    trials_per_gpu: int | None,
    gpus_per_trial: int | None,
    parallel: int | None,
    parallel_flag: str,
) -> list[str] | None:
    """One ``CUDA_VISIBLE_DEVICES`` value per trial slot, as ``--gpus``, ``--trials-per-gpu`` and
    ``--gpus-per-trial`` ask, announced on one line; None without ``--gpus``.

    ``parallel`` is the other way to say how many trials run at once (``--slots``, ``--agents``):
    the two cannot be combined, since with GPUs the GPUs set it."""
    from sweeper.agents.gpus import GpuSelectionError, gpu_groups, select_gpus, visible_devices

    if gpus is None:
        for flag, value in (("--trials-per-gpu", trials_per_gpu), ("--gpus-per-trial", gpus_per_trial)):
            if value is not None:
                raise click.UsageError(f"{flag} needs --gpus (all, or indices like 0,1)")
        return None
    if parallel is not None:
        raise click.UsageError(
            f"pass either --gpus or {parallel_flag}, not both: with --gpus the number of GPUs "
            "(times --trials-per-gpu, or divided by --gpus-per-trial) is the number of trials at once"
        )
    per_gpu, per_trial = trials_per_gpu or 1, gpus_per_trial or 1
    if per_gpu > 1 and per_trial > 1:
        raise click.UsageError(
            "pass either --trials-per-gpu or --gpus-per-trial, not both: trials share GPUs, or "
            "each trial has several to itself"
        )
    try:
        chosen = select_gpus(gpus, without_gpus=parallel_flag)
        groups, left_out = gpu_groups(chosen, per_trial)
    except GpuSelectionError as exc:
        raise click.UsageError(str(exc)) from None
    if per_gpu > 1:
        how = f", {per_gpu} trials on each at once"
    elif per_trial > 1:
        unused = f"; {', '.join(str(g) for g in left_out)} left unused" if left_out else ""
        how = f", {per_trial} per trial: {len(groups)} trial(s) at once{unused}"
    else:
        how = ""
    click.echo(f"using {len(chosen)} GPU(s): " + ", ".join(str(g) for g in chosen) + how)
    # Round by round, so the first trials spread over every GPU before any GPU takes a second.
    return [visible_devices(group) for _ in range(per_gpu) for group in groups]


class SpecFileError(click.ClickException):
    exit_code = EXIT_SPEC_ERROR

    def __init__(self, path: str, error: SpecError) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in error.problems))
        self.path = path

    def format_message(self) -> str:
        return self.message


def store_label(coordinator: Any) -> str | None:
    """The store URL (password masked) of an embedded coordinator; None for a remote one."""
    return getattr(getattr(coordinator, "store", None), "label", None)


def store_shown(coordinator: Any) -> str | None:
    """:func:`store_label`, with a SQLite path made absolute: a relative one means nothing from
    another folder. A server's URL shows *** for its password, to be written in by hand."""
    store = store_label(coordinator)
    if store and store.startswith("sqlite:///"):
        return f"sqlite:///{Path(store.removeprefix('sqlite:///')).resolve()}"
    return store


def agent_place(spec: SweepSpec, sweep_file: str, coordinator: Any, db_url: str | None) -> tuple[str, str]:
    """Where to start an agent of a sweep made here from ``sweep_file`` on an embedded store, and
    the ``--db`` option it needs there: ``("FOLDER", " --db URL")``, each shell-quoted, and
    empty when not needed. Agents look for a relative ``program`` in their working folder, and ``sweeper run``
    looks beside the sweep file too; a store named by SWEEPER_DB is left to the variable."""
    folder = Path(sweep_file).resolve().parent
    program = spec.program
    program_there = (  # found beside the sweep file but not here
        program is not None
        and not Path(program).is_absolute()
        and not Path(program).exists()
        and (folder / program).exists()
    )
    where = shlex.quote(str(folder)) if program_there else ""
    store = store_shown(coordinator)
    typed = bool(db_url) and not _set_by_environment("db_url")
    if not store or not (typed or program_there):
        return where, ""
    return where, f" --db {shlex.quote(store)}"


def load_spec(path: str, amend: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> SweepSpec:
    try:
        spec = load_sweep_file(path, amend)
    except SpecError as exc:
        raise SpecFileError(path, exc) from None
    print_advice(spec, path)
    return spec


def print_advice(spec: SweepSpec, path: str) -> None:
    """What in a valid sweep file is likely a mistake, on stderr."""
    from sweeper.spec.advice import spec_advice

    for line in spec_advice(spec):
        click.echo(f"warning: {path}: {line}", err=True)


def lacks_program(spec: SweepSpec) -> bool:
    """The command runs ``${program}`` (a whole chunk, as W&B expands it), and the sweep names none."""
    return "${program}" in spec.command and spec.program is None


def check_program_given(spec: SweepSpec, path: str, *, remote: bool = False) -> None:
    """A sweep whose command runs ``${program}`` but names none can be run by Python agents alone
    (``sweeper.agent(ID, function=train)``, as by W&B's ``wandb.agent``), which work on the
    embedded store: said here, before any ``sweeper agent`` meets it and refuses to run, and
    refused for a server, whose agents all run commands."""
    if not lacks_program(spec):
        return
    if remote:
        problem = "required: the command runs ${program}, and a sweeper server's agents run commands"
        raise SpecFileError(path, SpecError([Problem("program", problem)]))
    click.echo(
        f"warning: {path}: program: not given, and the command runs ${{program}}: `sweeper agent` "
        "cannot run this sweep, only a Python agent can (sweeper.agent(SWEEP_ID, function=train)); "
        "add program: train.py to run it as a command",
        err=True,
    )


def open_store_or_fail(db_url: str | None) -> Any:
    from sweeper.store import StoreError, open_store

    try:
        return open_store(db_url)
    except StoreError as exc:
        raise click.ClickException(f"{exc}{from_environment('db_url', 'SWEEPER_DB')}") from None


def from_environment(param: str, variable: str) -> str:
    """`` (from SWEEPER_DB)`` when the command's ``param`` came from that variable, not the
    command line: an error about a value the person never typed says where it is set."""
    return f" (from {variable})" if _set_by_environment(param) else ""


def _set_by_environment(param: str) -> bool:
    """The command's ``param`` came from its environment variable, not the command line."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(param) is ParameterSource.ENVIRONMENT


def resolve_program(spec: SweepSpec, sweep_file: str) -> str | None:
    """Where the sweep's ``program`` is, for local agents.

    W&B runs ``program`` relative to the agent's working directory; a path relative to the
    sweep file is accepted too, so ``sweeper run sweeps/x/grid.yaml`` works from anywhere.
    A ``program`` the command runs as a module (``-m ${program}``, W&B's pattern for
    ``program: pkg.train``) is a module name, not a file: it is passed on as written (None here).
    """
    return find_program(
        spec,
        [Path(), Path(sweep_file).parent],
        where=sweep_file,
        advice=f"run from the folder the program is in, or fix 'program' in {sweep_file}",
    )


def check_agent_program(spec: SweepSpec, sweep_id: str) -> None:
    """Refuse to start an agent whose every trial would fail at once: its sweep runs a ``program``
    file that is not in this folder (W&B's agent, too, runs ``program`` relative to its folder)."""
    find_program(
        spec,
        [Path()],
        where=f"sweep {sweep_id}",
        advice="start the agent in the folder the sweep's program is in",
    )


def check_agent_trackers(spec: SweepSpec, sweep_id: str) -> None:
    """Refuse to start an agent that cannot log where its sweep logs (see :func:`agent_tracker_problem`).
    A tracker slow to answer (with MLflow's own timeouts and retries) is said to be waited for."""
    from sweeper.integrations.session import agent_tracker_problem
    from sweeper.spec.integrations import enabled_trackers, tracker_settings

    trackers = enabled_trackers(tracker_settings(spec) or {})
    if not trackers:
        return
    found: list[str | None] = []
    asking = threading.Thread(target=lambda: found.append(agent_tracker_problem(spec, sweep_id)), daemon=True)
    asking.start()
    asking.join(_SAY_WAITING_AFTER)
    if asking.is_alive():
        click.echo(f"waiting for {' and '.join(trackers)} to answer before taking a trial...", err=True)
        asking.join()
    if found and found[0]:
        raise click.ClickException(found[0])


def find_program(spec: SweepSpec, folders: Sequence[Path], *, where: str, advice: str) -> str | None:
    """The sweep's ``program`` in the first of ``folders`` that holds it, for a command that runs
    ``${program}`` as a file; None when the command runs no program file. A program the command
    starts as its executable may also be a command on PATH."""
    if lacks_program(spec):  # valid for sweeper.agent(function=...), but a command needs something to run
        raise click.ClickException(f"program: required because the command uses ${{program}} ({where})")
    if spec.program is None or "${program}" not in spec.command or runs_program_as_module(spec.command):
        return None
    candidates = [folder / spec.program for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    if starts_program_directly(spec.command) and shutil.which(spec.program):
        return spec.program
    looked = " or ".join(dict.fromkeys(str(c.resolve()) for c in candidates))  # once each
    raise click.ClickException(f"program: {spec.program!r} not found (looked for {looked}); {advice}")


def runs_program_as_module(command: Sequence[str]) -> bool:
    """True when every chunk of ``command`` that uses ``${program}`` is exactly ``${program}``,
    right after a ``-m`` chunk."""
    uses = [i for i, chunk in enumerate(command) if "${program}" in chunk]
    return bool(uses) and all(command[i] == "${program}" and i > 0 and command[i - 1] == "-m" for i in uses)


def starts_program_directly(command: Sequence[str]) -> bool:
    """True when ``${program}`` is the command's executable (first, or right after ``${env}``)."""
    chunks = list(command)
    first = 1 if chunks[:1] == ["${env}"] else 0
    return chunks[first : first + 1] == ["${program}"]


# --- reaching a coordinator (remote over HTTP, or embedded on --db) ------------

coordinator_option = click.option(
    "--coordinator",
    "coordinator_url",
    envvar="SWEEPER_COORDINATOR",
    default=None,
    metavar="URL",
    help="A sweeper server, http(s)://host:port; without one, the --db store [env SWEEPER_COORDINATOR]",
)

token_option = click.option(
    "--token",
    envvar="SWEEPER_TOKEN",
    default=None,
    show_envvar=False,
    help="The server's token [env SWEEPER_TOKEN]",
)


def chosen_target(coordinator_url: str | None, db_url: str | None) -> tuple[str | None, str | None]:
    """The coordinator URL and the store URL a command works on, at most one of them: what was
    typed wins over the environment (a ``--db`` over SWEEPER_COORDINATOR, a ``--coordinator`` over
    SWEEPER_DB); with both from the environment, the coordinator. Both typed is a usage error."""
    if not (coordinator_url and db_url):
        return coordinator_url, db_url
    by_env = _set_by_environment("coordinator_url"), _set_by_environment("db_url")
    if by_env == (False, False):
        raise click.UsageError("pass either --coordinator (a server) or --db (a store here), not both")
    return (None, db_url) if by_env == (True, False) else (coordinator_url, None)


def connect_or_fail(
    coordinator_url: str | None,
    token: str | None,
    db_url: str | None,
    *,
    existing: bool = False,
    timeout: float = 10.0,
) -> Any:
    """A coordinator for the CLI: remote when a URL is given, else embedded (:func:`chosen_target`
    picks one); failures as ClickException.

    ``existing``: the command works on sweeps already made, so an embedded SQLite store that is not
    there is an error (a misspelt ``--db`` would otherwise make a new, empty one). ``timeout``:
    seconds a remote coordinator has to answer each call."""
    from sweeper.client import CoordinatorSetupError
    from sweeper.connect import connect
    from sweeper.store import StoreError

    coordinator_url, db_url = chosen_target(coordinator_url, db_url)
    try:
        return connect(coordinator_url, token=token, db=db_url, create=not existing, timeout=timeout)
    except StoreError as exc:
        raise click.ClickException(f"{exc}{from_environment('db_url', 'SWEEPER_DB')}") from None
    except CoordinatorSetupError as exc:  # a malformed URL, a token no header can carry, ...
        where = {
            "url": from_environment("coordinator_url", "SWEEPER_COORDINATOR"),
            "token": from_environment("token", "SWEEPER_TOKEN"),
        }.get(exc.about, "")
        raise click.ClickException(f"{exc}{where}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def coordinator_errors() -> Iterator[None]:
    """Turn a coordinator call that failed in a way a person can act on into a one-line error."""
    from sweeper.client import (
        AuthenticationError,
        CoordinatorError,
        CoordinatorTimeoutError,
        WrongSchemeError,
    )
    from sweeper.protocol import SweepNotFoundError
    from sweeper.store import StoreError

    try:
        yield
    except (AuthenticationError, CoordinatorError, StoreError, SweepNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:  # our own output was closed (`| head`): click ends quietly
        raise
    except OSError as exc:  # refused, timed out, 5xx
        said = isinstance(exc, CoordinatorTimeoutError | WrongSchemeError)  # what to change is said
        hint = "" if said else " (is `sweeper server` running there?)"
        raise click.ClickException(f"{exc}{hint}") from None


def sweep_id_argument(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The SWEEP_ID argument: a sweep's id, or a W&B sweep path ending in it (``entity/project/ID``)."""

    def take(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        from sweeper.protocol import sweep_id_from

        return None if value is None else sweep_id_from(value)

    return click.argument("sweep_id", required=required, callback=take)
