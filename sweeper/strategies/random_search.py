"""Random search with W&B's distributions; in a finite space, without replacement by default
(unless a parameter gives ``probabilities``: then draws repeat, as W&B's do, so the weights show)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

from sweeper.spec import SweepSpec, build_config, config_key, sample, space_values
from sweeper.spec.model import Distribution
from sweeper.strategies.base import Strategy, Suggestion
from sweeper.strategies.registry import register
from sweeper.trials import Trial

# Rejection sampling is tried this often before falling back to listing what is left.
_MAX_REJECTIONS = 64
# Finite spaces up to this size may be listed to find the configurations not yet run.
_MAX_LISTED = 100_000


@register
class RandomSearch(Strategy):
    method = "random"

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        unique = spec.options.sample_without_replacement
        if unique is None:
            weighted = Distribution.CATEGORICAL_W_PROBABILITIES
            unique = not any(p.distribution is weighted for p in spec.parameters)
        self._unique = unique and self.space_size is not None

    def _draw(self, rng: random.Random) -> dict[str, Any]:
        return build_config(self.spec, {p.path: sample(p, rng) for p in self.spec.parameters})

    def completion(self, trials: Sequence[Trial], rng: random.Random) -> str | None:
        # Also hyperband's and bohb's, whose suggestions end only here: bohb's without its model fit.
        return self.space_used_up({t.config_key for t in trials}) if self._unique else None

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        if not self._unique:
            return Suggestion.run(self._draw(rng))
        taken = {t.config_key for t in trials}
        if (reason := self.space_used_up(taken)) is not None:
            return Suggestion.done(reason)
        for _ in range(_MAX_REJECTIONS):
            config = self._draw(rng)
            if config_key(config) not in taken:
                return Suggestion.run(config)
        if self.space_size > _MAX_LISTED:  # type: ignore[operator]  # unique: the space is finite
            # Too large to list; rejection keeps succeeding in practice, so take the last draw.
            return Suggestion.run(config)
        # Nearly exhausted: pick uniformly among what is left, so the sweep still ends.
        left = [config for config in self._all_configs() if config_key(config) not in taken]
        return Suggestion.run(rng.choice(left))

    def _all_configs(self) -> list[dict[str, Any]]:
        paths = [p.path for p in self.spec.parameters]
        axes = [space_values(p) or () for p in self.spec.parameters]
        return [build_config(self.spec, dict(zip(paths, c, strict=True))) for c in itertools.product(*axes)]
