"""Options and error handling shared by the subcommands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from sweeper.spec import SpecError, SweepSpec, load_sweep_file

# A user mistake in a sweep file exits 2 (like click's usage errors); a runtime failure exits 1.
EXIT_SPEC_ERROR = 2

db_option = click.option(
    "--db",
    "db_url",
    envvar="SWEEPER_DB",
    default=None,
    metavar="URL",
    help="Store URL: sqlite:///path.db or postgresql://... [default: ./.sweeper/sweeper.db; env SWEEPER_DB]",
)


class SpecFileError(click.ClickException):
    exit_code = EXIT_SPEC_ERROR

    def __init__(self, path: str, error: SpecError) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in error.problems))
        self.path = path

    def format_message(self) -> str:
        return self.message


def load_spec(path: str) -> SweepSpec:
    try:
        return load_sweep_file(path)
    except SpecError as exc:
        raise SpecFileError(path, exc) from None


def open_store_or_fail(db_url: str | None) -> Any:
    from sweeper.store import StoreError, open_store

    try:
        return open_store(db_url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def resolve_program(spec: SweepSpec, sweep_file: str) -> str | None:
    """Where the sweep's ``program`` is, for local agents.

    W&B runs ``program`` relative to the agent's working directory; a path relative to the
    sweep file is accepted too, so ``sweeper run sweeps/x/grid.yaml`` works from anywhere.
    """
    if not any("${program}" in part for part in spec.command):
        return None
    if spec.program is None:
        # Valid for sweeper.agent(function=...), but a command needs something to run.
        raise click.ClickException(f"program: required because the command uses ${{program}} ({sweep_file})")
    candidates = [Path(spec.program), Path(sweep_file).parent / spec.program]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    looked = " or ".join(str(c.resolve()) for c in candidates)
    raise click.ClickException(
        f"program: {spec.program!r} not found (looked for {looked}); "
        f"run from the folder the program is in, or fix 'program' in {sweep_file}"
    )


def cwd() -> Path:
    return Path(os.getcwd())
