"""Sampling one parameter with W&B's definitions, from a given ``random.Random`` only.

No numpy here: the coordinator and the agent import this module and stay light.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from typing import Any

from sweeper.spec.model import Distribution, Parameter

D = Distribution


def quantize(x: float, q: float | int) -> float | int:
    """``round(x / q) * q`` with round-half-even (as numpy's ``np.round``); an int ``q`` gives an int."""
    k = round(x / q)  # Python's round() is half-to-even, like np.round
    return int(k * q) if isinstance(q, int) else float(k * q)


def _uniform(rng: random.Random, lo: float, hi: float) -> float:
    return rng.uniform(lo, hi)


def _continuous(p: Parameter, rng: random.Random) -> float:
    """The unquantized draw of every numeric distribution except int_uniform."""
    d = p.distribution
    if d in (D.UNIFORM, D.Q_UNIFORM):
        return _uniform(rng, p.min, p.max)
    if d in (D.LOG_UNIFORM, D.Q_LOG_UNIFORM):  # bounds are base-e exponents
        return math.exp(_uniform(rng, p.min, p.max))
    if d in (D.LOG_UNIFORM_VALUES, D.Q_LOG_UNIFORM_VALUES):
        return math.exp(_uniform(rng, math.log(p.min), math.log(p.max)))
    if d is D.INV_LOG_UNIFORM:
        return math.exp(-_uniform(rng, p.min, p.max))
    if d is D.INV_LOG_UNIFORM_VALUES:
        return math.exp(-_uniform(rng, -math.log(p.max), -math.log(p.min)))
    if d in (D.NORMAL, D.Q_NORMAL):
        return rng.normalvariate(p.mu, p.sigma)
    if d in (D.LOG_NORMAL, D.Q_LOG_NORMAL):
        return math.exp(rng.normalvariate(p.mu, p.sigma))
    if d in (D.BETA, D.Q_BETA):
        return rng.betavariate(p.a, p.b)
    raise ValueError(f"{p.name}: {d} is not a continuous distribution")


QUANTIZED = frozenset(
    {D.Q_UNIFORM, D.Q_LOG_UNIFORM, D.Q_LOG_UNIFORM_VALUES, D.Q_NORMAL, D.Q_LOG_NORMAL, D.Q_BETA}
)


def sample(param: Parameter, rng: random.Random) -> Any:
    """One value of ``param``, drawn with ``rng`` exactly as W&B defines the distribution."""
    d = param.distribution
    if d is D.CONSTANT:
        return param.value
    if d is D.CATEGORICAL:
        return param.values[rng.randrange(len(param.values))]
    if d is D.CATEGORICAL_W_PROBABILITIES:
        return param.values[_pick(param.probabilities, rng.random())]
    if d is D.INT_UNIFORM:
        return rng.randint(param.min, param.max)  # inclusive of both ends
    x = _continuous(param, rng)
    return quantize(x, param.q) if d in QUANTIZED else x


def _pick(probabilities: tuple[float, ...], u: float) -> int:
    """Index of the first value whose cumulative probability exceeds ``u``."""
    cdf = list(itertools.accumulate(probabilities))
    i = bisect.bisect_right(cdf, u)
    if i < len(cdf):
        return i
    # u beyond a cdf that sums to slightly under 1: the last value with any weight.
    return max(j for j, p in enumerate(probabilities) if p > 0)
