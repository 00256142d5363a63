"""What a sweep's values must be for every store, and a sweeper server, to keep them as given:
checked once, as a sweep is made (:func:`sweeper.spec.parse_new_sweep`, the server's create route)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sweeper.spec.fields import show
from sweeper.spec.problems import Problem, join

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what a database integer holds


def text_problem(value: str) -> str | None:
    """Why no database text column holds ``value``, or None."""
    if "\x00" in value:
        return "text must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (no lone surrogates)"
    return None


def storable_problems(value: Any, path: str = "") -> list[Problem]:
    """Every value under ``value`` that a sweep cannot hold, by key path: NaN or infinity (JSON,
    as a server takes sweeps, has none), integers past 64 bits, text no database keeps, and what
    is not plain data at all (a date or a NumPy number given through the Python API). A YAML
    file's dates are read as their text (:mod:`.loader`)."""
    if isinstance(value, Mapping):
        found: list[Problem] = []
        for key, item in value.items():
            where = join(path, str(key))
            found += storable_problems(key, where) + storable_problems(item, where)
        return found
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in storable_problems(item, f"{path}[{i}]")]
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, float):
        if math.isfinite(value):
            return []
        said = f"{value} is not a number a sweep can hold: a sweeper server takes sweeps as JSON, "
        return [Problem(path, said + "which has no NaN or infinity")]
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return []
        return [
            Problem(path, "integer too large: it must fit in 64 bits (write it as a float if it is a bound)")
        ]
    if isinstance(value, str):
        problem = text_problem(value)
        return [] if problem is None else [Problem(path, problem)]
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return [
        Problem(
            path,
            f"{show(value)} is a {kind}, which a sweep cannot store; expected a string, a number, "
            "true/false, null, a list or a mapping (convert it: str(), int(), float(), list())",
        )
    ]
