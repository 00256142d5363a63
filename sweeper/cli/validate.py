"""``sweeper validate FILE...``: check sweep files without running anything."""

from __future__ import annotations

import click

from sweeper.cli.common import check_program_given, print_advice
from sweeper.spec import SpecError, describe, load_sweep_file


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
def validate(files: tuple[str, ...]) -> None:
    """Check sweep files (YAML or JSON) and report every problem in each.

    Exits 0 when all are valid, 2 when any is not.
    """
    failed = False
    for file in files:
        try:
            spec = load_sweep_file(file)
        except SpecError as exc:
            failed = True
            for problem in exc.problems:
                click.echo(f"{file}: {problem}", err=True)
            continue
        click.echo(f"{file}: OK: {describe(spec)}")
        print_advice(spec, file)
        check_program_given(spec, file)
    if failed:
        # 2 is click's code for bad input (as UsageError), without the usage banner.
        click.get_current_context().exit(2)
