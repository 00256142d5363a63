"""Grid search: every combination of the parameters' values, each exactly once."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from sweeper.spec import SweepSpec, build_config, config_key, grid_problems, grid_values
from sweeper.strategies.base import Strategy, Suggestion
from sweeper.strategies.registry import register
from sweeper.trials import Trial


@register
class GridSearch(Strategy):
    """Walks the grid in W&B's order: parameters sorted by name at each level of nesting (a
    nested block in its own name's place), the first varying slowest, so a ``run_cap`` or
    ``--count`` below the grid's size runs the same combinations as W&B. A combination counts as
    taken as soon as any trial holds it, whatever its state: failed ones are retried by the
    coordinator's retry policy, not here.
    """

    method = "grid"

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        # Sorting the paths sorts each level's names, as W&B's HyperParameterSet.from_config does.
        params = sorted(spec.parameters, key=lambda p: p.path)
        paths = [p.path for p in params]
        axes = [grid_values(p) or () for p in params]
        # Built once per sweep: suggest() is called for every trial.
        self._grid = [
            build_config(spec, dict(zip(paths, combo, strict=True))) for combo in itertools.product(*axes)
        ]
        self._keys = [config_key(config) for config in self._grid]

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        return grid_problems(spec)

    @property
    def size(self) -> int:
        return len(self._grid)

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        taken = {t.config_key for t in trials}
        for key, config in zip(self._keys, self._grid, strict=True):
            if key not in taken:
                return Suggestion.run(config)
        return Suggestion.done(f"all {self.size} grid combinations have run")
