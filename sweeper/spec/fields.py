"""Readers for single values of a sweep file: each returns the value or records a Problem.

Numeric fields also accept numeric strings, because PyYAML (YAML 1.1) and hand-written JSON
both hand us ``"1e-5"`` where a number was meant.
"""

from __future__ import annotations

import math
from typing import Any

from sweeper.spec.problems import Problem, did_you_mean

# Returned when a value was invalid; the Problem is already recorded.
INVALID: Any = object()


_SHOWN = 120  # characters of a value a message shows: a whole file read as one string is no help


def show(value: Any) -> str:
    """A value as it reads in a message: strings quoted, everything else plain; a long one cut short."""
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= _SHOWN:
        return text
    length = len(value) if isinstance(value, str) else len(text)
    return f"{text[: _SHOWN - 5]}...{text[-1]} ({length} characters)"


def to_number(value: Any) -> int | float | None:
    """``value`` as an int or float, or None. Bools are not numbers here; ints stay ints."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return None
    return None


def number(value: Any, path: str, problems: list[Problem], *, what: str = "a number") -> Any:
    """A finite number (int or float, as written)."""
    n = to_number(value)
    if n is None or not math.isfinite(n):
        problems.append(Problem(path, f"expected {what}, got {show(value)}"))
        return INVALID
    return n


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: Any, path: str, problems: list[Problem]) -> Any:
    """Seconds above 0: a number of seconds (``3600``, ``'3600'``), or one with a unit (``'90s'``,
    ``'30m'``, ``'2h'``, ``'1.5d'``)."""
    what = "a duration such as 3600, '90s', '30m', '2h' or '1d'"
    n = to_number(value)
    if n is None and isinstance(value, str) and value.strip()[-1:] in _DURATION_UNITS:
        amount = to_number(value.strip()[:-1])
        n = None if amount is None else amount * _DURATION_UNITS[value.strip()[-1]]
    if n is None:
        problems.append(Problem(path, f"expected {what}, got {show(value)}"))
        return INVALID
    if not 0 < n < math.inf:
        problems.append(Problem(path, f"expected {what} above 0, got {show(value)}"))
        return INVALID
    return float(n)


def integer(value: Any, path: str, problems: list[Problem], *, what: str = "an integer") -> Any:
    """An int; an integral float (``1e3``) is accepted as the int it equals."""
    n = to_number(value)
    if isinstance(n, float) and math.isfinite(n) and n.is_integer():
        n = int(n)
    if not isinstance(n, int):
        problems.append(Problem(path, f"expected {what}, got {show(value)}"))
        return INVALID
    return n


def string(value: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(value, str):
        problems.append(Problem(path, f"expected a string, got {show(value)}"))
        return INVALID
    return value


def boolean(value: Any, path: str, problems: list[Problem]) -> Any:
    if not isinstance(value, bool):
        problems.append(Problem(path, f"expected true or false, got {show(value)}"))
        return INVALID
    return value


def choice(value: Any, choices: tuple[str, ...], path: str, problems: list[Problem]) -> Any:
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        problems.append(Problem(path, f"expected one of {', '.join(choices)}, got {show(value)}{hint}"))
        return INVALID
    return value
