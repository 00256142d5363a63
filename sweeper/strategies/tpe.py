"""``method: tpe``: Tree-structured Parzen Estimator, for large budgets and conditional spaces."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from sweeper.spec import SweepSpec, build_config
from sweeper.strategies.base import Strategy, Suggestion
from sweeper.strategies.bayes import metric_problems, missing_search_extra, numpy_rng
from sweeper.strategies.registry import register
from sweeper.trials import Trial


@register
class TPESearch(Strategy):
    """Multivariate TPE; pending trials count as bad, so parallel agents spread out."""

    method = "tpe"

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        self._codec: Any = None

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        return metric_problems(spec)

    def completion(self, trials: Sequence[Trial], rng: random.Random) -> str | None:
        return self.space_used_up({t.config_key for t in trials})  # without fitting a model

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        if self.spec.metric is None:
            raise ValueError("method tpe needs a metric (metric: {name: ..., goal: ...})")
        if (reason := self.completion(trials, rng)) is not None:
            return Suggestion.done(reason)
        try:
            from sweeper.optim.encoding import SpaceCodec
            from sweeper.optim.history import observations, prior_draw
            from sweeper.optim.tpe import propose
        except ImportError as e:
            raise missing_search_extra(self.method) from e
        if self._codec is None:
            self._codec = SpaceCodec(self.spec.parameters)
        gen = numpy_rng(rng)
        obs = observations(trials, self._codec, self.spec.metric)
        row = propose(self._codec, obs, gen)
        if row is None:  # every candidate found repeats a trial: a prior draw, new if one is
            row = prior_draw(self._codec, obs, gen)
        return Suggestion.run(build_config(self.spec, self._codec.decode(row)))
