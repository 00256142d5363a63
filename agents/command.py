"""Expand a sweep's ``command`` template into argv, with W&B's agent semantics.

Order and rules follow ``wandb agent``: ``${envvar:NAME}`` is replaced inside every chunk first
(an unset variable leaves its bare name); then a chunk that is exactly ``${macro}`` becomes the
macro's list of arguments, and any other chunk stays one literal argument. Values are written
with ``str()``, so ``True``, ``None`` and nested dicts read as Python prints them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeper.files import write_atomic

log = logging.getLogger(__name__)

#: What a sweep without ``command`` runs, as in W&B.
DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")

# W&B matches upper-case names only; a lower-case one stays as written.
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


def expand_envvars(chunk: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace each ``${envvar:NAME}`` in ``chunk`` with the variable's value (its name if unset)."""
    env = os.environ if environ is None else environ

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            log.warning("command uses ${envvar:%s} but %s is not set; using the bare name", name, name)
            return name
        return env[name]

    return _ENVVAR.sub(value, chunk)


def _flag_values(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(str(key), value) for key, value in config.items()]


def _no_boolean_flags(config: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in _flag_values(config):
        if isinstance(value, bool):
            if value:
                out.append(f"--{key}")
        else:
            out.append(f"--{key}={value}")
    return out


def _no_equals(config: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in _flag_values(config):
        out += [f"--{key}", str(value)]
    return out


_ARG_MACROS: Mapping[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "args": lambda c: [f"--{k}={v}" for k, v in _flag_values(c)],
    "args_no_hyphens": lambda c: [f"{k}={v}" for k, v in _flag_values(c)],
    "args_no_boolean_flags": _no_boolean_flags,
    "args_no_equals": _no_equals,
    "args_json": lambda c: [json.dumps(dict(c))],
    "args_append_hydra": lambda c: [f"+{k}={v}" for k, v in _flag_values(c)],
    "args_override_hydra": lambda c: [f"++{k}={v}" for k, v in _flag_values(c)],
}

MACROS: frozenset[str] = frozenset({*_ARG_MACROS, "env", "interpreter", "program", "args_json_file"})


def expand_command(
    template: Sequence[Any] | None,
    *,
    config: Mapping[str, Any],
    program: str | None,
    args_json_path: str | os.PathLike[str],
    interpreter: str = sys.executable,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv for one trial. ``${args_json_file}`` writes the config as JSON to ``args_json_path``."""
    chunks = [expand_envvars(str(c), environ) for c in (template or DEFAULT_COMMAND)]
    argv: list[str] = []
    for chunk in chunks:
        if not (chunk.startswith("${") and chunk.endswith("}")):
            argv.append(chunk)
            continue
        name = chunk[2:-1]
        if name == "env":
            argv.append("/usr/bin/env")
        elif name == "interpreter":
            argv.append(interpreter)
        elif name == "program":
            if program is None:
                log.warning("command uses ${program} but the sweep names no program; leaving it out")
            else:
                argv.append(program)
        elif name == "args_json_file":
            path = Path(args_json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(dict(config)))
            argv.append(os.fspath(args_json_path))
        elif name in _ARG_MACROS:
            argv += _ARG_MACROS[name](config)
        else:
            # W&B drops a whole-chunk macro it does not know; say so instead of staying silent.
            log.warning("unknown command macro %s left out of the command", chunk)
    return argv
