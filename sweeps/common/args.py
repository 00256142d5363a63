"""``--key=value`` command-line overrides for a script's defaults."""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def parse_value(text: str) -> Any:
    """``0.001`` -> float, ``True`` -> bool, ``[1, 2]`` -> list, anything else stays a string.

    Agents write values with Python's ``str()``, so Python literals are the format to read.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_from_args(defaults: Mapping[str, Any], argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The defaults with every ``--key=value`` (or ``--key value``) argument on top.

    This is how a sweep's default command (``${args}``) passes a trial's values, and how
    one runs a script by hand with other values: ``python train.py --epochs=2``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    config = dict(defaults)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}; use --key=value")
        key, sep, text = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise SystemExit(f"--{key} needs a value")
            i += 1
            text = args[i]
        config[key.replace("-", "_")] = parse_value(text)
        i += 1
    return config
