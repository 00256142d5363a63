"""``method: bayes``: Gaussian-process Bayesian optimisation over mixed, nested spaces.

The maths lives in :mod:`sweeper.optim` and is imported inside the methods, so importing the
strategies (and so the coordinator) does not need numpy or scipy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from sweeper.spec import SweepSpec, build_config
from sweeper.strategies.base import Strategy, Suggestion
from sweeper.strategies.registry import register
from sweeper.trials import Trial


def metric_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    if spec.metric is None:
        return [("metric", f"required for method {spec.method}: the search needs a value to optimise")]
    return []


def numpy_rng(rng: random.Random) -> Any:
    import numpy as np

    return np.random.default_rng(rng.getrandbits(128))


def missing_search_extra(method: str) -> ImportError:
    return ImportError(
        f"method {method} needs numpy and scipy: pip install 'sweeper[search]'",
    )


@register
class BayesSearch(Strategy):
    """GP with a Matern-5/2 ARD kernel, log expected improvement, pending trials believed."""

    method = "bayes"

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        self._codec: Any = None  # built on first use: it needs numpy

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        return metric_problems(spec)

    def _space(self) -> Any:
        if self._codec is None:
            try:
                from sweeper.optim.encoding import SpaceCodec
            except ImportError as e:
                raise missing_search_extra(self.method) from e
            self._codec = SpaceCodec(self.spec.parameters)
        return self._codec

    def completion(self, trials: Sequence[Trial], rng: random.Random) -> str | None:
        return self.space_used_up({t.config_key for t in trials})  # without fitting a model

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        if self.spec.metric is None:
            raise ValueError("method bayes needs a metric (metric: {name: ..., goal: ...})")
        if (reason := self.completion(trials, rng)) is not None:
            return Suggestion.done(reason)
        codec = self._space()
        from sweeper.optim.bo import propose
        from sweeper.optim.history import observations, prior_draw
        from sweeper.optim.threads import one_blas_thread

        gen = numpy_rng(rng)
        obs = observations(trials, codec, self.spec.metric)
        with one_blas_thread():
            row = propose(codec, obs, gen)
        if row is None:  # every candidate found repeats a trial: a prior draw, new if one is
            row = prior_draw(codec, obs, gen)
        return Suggestion.run(build_config(self.spec, codec.decode(row)))
