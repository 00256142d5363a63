"""Grid search: every combination of the parameters' values, each exactly once."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from typing import Any

from sweeper.spec import SweepSpec, build_config, config_key, grid_problems, grid_values
from sweeper.strategies.base import Strategy, Suggestion
from sweeper.strategies.registry import register
from sweeper.trials import Trial, TrialState


@register
class GridSearch(Strategy):
    """Walks the grid in W&B's order: parameters sorted by name at each level of nesting (a
    nested block in its own name's place), the first varying slowest, so a ``run_cap`` or
    ``--count`` below the grid's size runs the same combinations as W&B. A combination counts as
    taken as soon as any trial holds it, whatever its state: failed ones are retried by the
    coordinator's retry policy, not here.

    The grid is never listed (it may hold a million combinations): combination ``i`` is made
    from ``i`` alone, so a sweep's compiled spec costs only its parameters' values.
    """

    method = "grid"

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        # Sorting the paths sorts each level's names, as W&B's HyperParameterSet.from_config does.
        params = sorted(spec.parameters, key=lambda p: p.path)
        self._paths = [p.path for p in params]
        self._axes = [grid_values(p) or () for p in params]
        self._size = math.prod(len(axis) for axis in self._axes)
        # The keys of combinations 0, 1, ... as far as a suggestion has walked: a function of the
        # spec alone, made once each, so each suggestion only looks them up (a trial's own key is
        # made once per record too). Locked: agents' threads may ask at once.
        self._keys: list[str] = []
        self._keys_lock = threading.Lock()

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        return grid_problems(spec)

    @property
    def size(self) -> int:
        return self._size

    def config_at(self, index: int) -> dict[str, Any]:
        """Combination ``index`` (0 <= index < size) in ``itertools.product(*axes)`` order: the
        digits of ``index`` in mixed radix, the last axis the fastest-varying digit."""
        if not 0 <= index < self.size:
            raise IndexError(f"grid combination {index} of {self.size}")
        values = {}
        for path, axis in zip(reversed(self._paths), reversed(self._axes), strict=True):
            index, digit = divmod(index, len(axis))
            values[path] = axis[digit]
        return build_config(self.spec, values)

    def key_at(self, index: int) -> str:
        """:func:`~sweeper.spec.config_key` of combination ``index``."""
        with self._keys_lock:
            while len(self._keys) <= index:
                self._keys.append(config_key(self.config_at(len(self._keys))))
            return self._keys[index]

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        # Trials take combinations in index order, so the walk stops after about len(trials) keys.
        taken = {t.config_key for t in trials}
        for index in range(self.size):
            if self.key_at(index) not in taken:
                return Suggestion.run(self.config_at(index))
        every = (
            f"all {self.size} grid combinations have" if self.size > 1 else "the grid's one combination has"
        )
        if any(t.state is TrialState.RUNNING for t in trials):  # the agents wait for them
            return Suggestion.done(f"{every} run or {'are' if self.size > 1 else 'is'} running")
        return Suggestion.done(f"{every} run")

    def completion(self, trials: Sequence[Trial], rng: random.Random) -> str | None:
        # Fewer configurations taken than combinations: one is left, without walking the grid.
        if len({t.config_key for t in trials}) < self.size:
            return None
        return super().completion(trials, rng)
