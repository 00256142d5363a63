"""Problems found in a sweep file, gathered and reported together."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a sweep file. ``path`` is the key path (``parameters.lr.min``), or ``""``
    for the file or its top level."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(Exception):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: Iterable[Problem], source: str = "<dict>") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the sweep file:\n{lines}")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to ``word``, or None when none is close. A word that begins only one
    choice (``max`` for ``maximize``) is that choice, however short."""
    choices = list(choices)
    begun = [c for c in choices if len(word) >= 3 and c.lower().startswith(word.lower())]
    if len(begun) == 1:
        return begun[0]
    # Letters swapped ('valuse'): the choice with the same letters, which difflib may rank below
    # one a letter shorter ('value').
    swapped = [c for c in choices if sorted(c.lower()) == sorted(word.lower())]
    if len(swapped) == 1:
        return swapped[0]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    near = closest(word, choices)
    return f"; did you mean {near!r}?" if near else ""


def unknown_key(key: str, choices: Iterable[str]) -> str:
    """Message for a key that is not allowed where it stands."""
    choices = sorted(choices)
    hint = did_you_mean(key, choices)
    return f"unknown key{hint}" if hint else f"unknown key; expected one of {', '.join(choices)}"


def join(*parts: object) -> str:
    """Key path from parts, skipping empty ones: ``join("parameters", "lr", "min")``."""
    return ".".join(str(p) for p in parts if p != "")
