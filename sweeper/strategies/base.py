"""The strategy contract.

A strategy is a function of the data it is given: the frozen spec (at construction), the
trial history (every trial, including running ones, so parallel agents do not get the same
point) and a seeded rng. It keeps no state between calls; a coordinator restarted on the
same store makes the same decisions.
"""

from __future__ import annotations

import enum
import functools
import random
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sweeper.spec import space_size
from sweeper.spec.model import SweepSpec
from sweeper.trials import Trial


class SuggestionKind(enum.StrEnum):
    RUN = "run"  # run ``config`` now
    WAIT = "wait"  # nothing now; running trials may change that
    DONE = "done"  # the search is complete


@dataclass(frozen=True)
class Suggestion:
    kind: SuggestionKind
    config: Mapping[str, Any] | None = None
    reason: str = ""
    member: int | None = None  # population slot (method pbt)
    restore_from: str | None = None  # checkpoint location the trial starts from

    @classmethod
    def run(
        cls, config: Mapping[str, Any], *, member: int | None = None, restore_from: str | None = None
    ) -> Suggestion:
        return cls(SuggestionKind.RUN, config=config, member=member, restore_from=restore_from)

    @classmethod
    def wait(cls, reason: str) -> Suggestion:
        return cls(SuggestionKind.WAIT, reason=reason)

    @classmethod
    def done(cls, reason: str) -> Suggestion:
        return cls(SuggestionKind.DONE, reason=reason)


class Strategy(ABC):
    """Subclass, set ``method``, and register with :func:`sweeper.strategies.register`."""

    method: ClassVar[str]
    #: Hand :meth:`suggest` every trial's history of the sweep's metric, not only its summary (costs a query).
    needs_history: ClassVar[bool] = False

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec

    @functools.cached_property
    def space_size(self) -> int | None:
        """How many configurations the spec's space holds; None where it is infinite."""
        return space_size(self.spec)

    def space_used_up(self, taken: Collection[str]) -> str | None:
        """For a search that runs each configuration once: why it is complete, every configuration
        of its finite space having a trial (``taken``: their configuration keys). None while one is
        left, or where the space is infinite."""
        size = self.space_size
        if size is not None and len(taken) >= size:
            return f"all {size} configurations of the finite space have been tried"
        return None

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        """Problems with a spec for this method, as (key path, message). Empty when fine."""
        return []

    @abstractmethod
    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        """The next configuration to run, given every trial of the sweep so far.

        Retries of failed trials and ``run_cap`` are handled by the coordinator; a strategy only
        decides what is new. It may be asked while a retry waits for another agent (see
        :func:`sweeper.planning.find_retry`), so ``trials`` can hold failed trials not yet rerun.
        """

    def completion(self, trials: Sequence[Trial], rng: random.Random) -> str | None:
        """Why the search is complete given ``trials``, or None while it has more to suggest.

        The coordinator asks whenever a trial ends with no other trial running, and throws the
        suggestion away; a strategy whose suggestions are costly (a model fit) answers without
        making one. Must agree with :meth:`suggest` returning DONE.
        """
        suggestion = self.suggest(trials, rng)
        return suggestion.reason if suggestion.kind is SuggestionKind.DONE else None
