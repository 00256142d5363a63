"""The ``sweeper`` command. Each subcommand lives in its own module."""

from __future__ import annotations

import click

from sweeper import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sweeper")
def main() -> None:
    """Self-hosted hyperparameter sweeps with W&B sweep files."""


def _register() -> None:
    from sweeper.cli.inspect import status, trials
    from sweeper.cli.run import run
    from sweeper.cli.validate import validate

    for command in (validate, run, status, trials):
        main.add_command(command)


_register()
