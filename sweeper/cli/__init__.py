"""The ``sweeper`` command. Each subcommand lives in its own module, listed in ``_COMMANDS``."""

from __future__ import annotations

import importlib

import click

from sweeper import __version__
from sweeper.cli.init_process import become_init_if_pid1

# (module, command names). Imported when the group is built; each module keeps its own
# heavy imports inside the command functions so ``sweeper --help`` stays fast.
_COMMANDS: list[tuple[str, tuple[str, ...]]] = [
    ("sweeper.cli.validate", ("validate",)),
    ("sweeper.cli.run", ("run",)),
    ("sweeper.cli.agent", ("agent",)),
    ("sweeper.cli.inspect", ("status", "trials")),
    ("sweeper.cli.service", ("server", "sweep", "stop", "pause", "resume", "cancel")),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sweeper")
def main() -> None:
    """Self-hosted hyperparameter sweeps with W&B sweep files."""
    become_init_if_pid1()  # in a container, as its first process: reap what the trials leave


for _module, _names in _COMMANDS:
    for _name in _names:
        main.add_command(getattr(importlib.import_module(_module), _name))
