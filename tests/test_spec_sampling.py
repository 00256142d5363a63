"""Sampling follows W&B's definitions: checked statistically against each definition's CDF."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from sweeper.spec import Distribution, Parameter, sample
from sweeper.spec.distributions import quantize

D = Distribution
N = 4000
ALPHA = 0.001


def draws(param: Parameter, seed: int = 1234, n: int = N) -> list:
    rng = random.Random(seed)
    return [sample(param, rng) for _ in range(n)]


def p(distribution: Distribution, **fields: object) -> Parameter:
    return Parameter(path=("x",), distribution=distribution, **fields)


def u_cdf(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: stats.uniform.cdf(x, lo, hi - lo)


# (parameter, CDF of W&B's definition, support low, support high)
CONTINUOUS = [
    (p(D.UNIFORM, min=-2, max=3), u_cdf(-2, 3), -2, 3),
    # log_uniform: the bounds are base-e exponents.
    (p(D.LOG_UNIFORM, min=-9.0, max=-2.0), lambda x: u_cdf(-9, -2)(np.log(x)), math.exp(-9), math.exp(-2)),
    (p(D.LOG_UNIFORM_VALUES, min=1e-4, max=1e-1), stats.loguniform(1e-4, 1e-1).cdf, 1e-4, 1e-1),
    # exp(-U(min, max)): P(X <= x) = P(U >= -ln x)
    (
        p(D.INV_LOG_UNIFORM, min=1.0, max=3.0),
        lambda x: 1 - u_cdf(1, 3)(-np.log(x)),
        math.exp(-3),
        math.exp(-1),
    ),
    (
        p(D.INV_LOG_UNIFORM_VALUES, min=0.01, max=0.5),
        lambda x: 1 - u_cdf(-math.log(0.5), -math.log(0.01))(-np.log(x)),
        0.01,
        0.5,
    ),
    (p(D.NORMAL, mu=1.5, sigma=0.5), stats.norm(1.5, 0.5).cdf, -math.inf, math.inf),
    (p(D.NORMAL), stats.norm(0, 1).cdf, -math.inf, math.inf),
    (p(D.LOG_NORMAL, mu=0.5, sigma=0.8), stats.lognorm(s=0.8, scale=math.exp(0.5)).cdf, 0, math.inf),
    (p(D.BETA, a=2.0, b=5.0), stats.beta(2, 5).cdf, 0, 1),
    (p(D.BETA, a=0.5, b=0.5), stats.beta(0.5, 0.5).cdf, 0, 1),
]


@pytest.mark.parametrize(
    ("param", "cdf", "lo", "hi"), CONTINUOUS, ids=[c[0].distribution for c in CONTINUOUS]
)
def test_continuous_matches_wandb_definition(param: Parameter, cdf: Callable, lo: float, hi: float) -> None:
    xs = draws(param)
    assert all(isinstance(x, float) for x in xs)
    assert all(lo <= x <= hi for x in xs)
    result = stats.kstest(xs, cdf)
    assert result.pvalue > ALPHA, result


def test_ks_detects_the_exponent_mistake() -> None:
    """The check above can fail: values drawn between the bounds are not log_uniform's."""
    wrong = p(D.LOG_UNIFORM_VALUES, min=math.exp(-9.0), max=math.exp(-2.0))
    assert stats.kstest(draws(wrong), stats.uniform(-9, 7).cdf).pvalue < ALPHA


def lattice_probabilities(cdf: Callable, q: float, ks: list[int]) -> np.ndarray:
    """P(round(X/q) = k) for each k: X falls within half a step of k*q."""
    ks_arr = np.asarray(ks, dtype=float)
    return cdf((ks_arr + 0.5) * q) - cdf((ks_arr - 0.5) * q)


QUANTIZED = [
    (p(D.Q_UNIFORM, min=0, max=10, q=2), u_cdf(0, 10)),
    (p(D.Q_UNIFORM, min=-1.0, max=1.0, q=0.25), u_cdf(-1, 1)),
    (p(D.Q_LOG_UNIFORM, min=0.0, max=4.0, q=5), lambda x: u_cdf(0, 4)(np.log(np.maximum(x, 1e-300)))),
    (p(D.Q_LOG_UNIFORM_VALUES, min=1, max=1000, q=50), lambda x: stats.loguniform(1, 1000).cdf(x)),
    (p(D.Q_NORMAL, mu=10, sigma=3, q=0.5), stats.norm(10, 3).cdf),
    (p(D.Q_NORMAL, mu=0, sigma=4, q=1), stats.norm(0, 4).cdf),
    (p(D.Q_LOG_NORMAL, mu=2.0, sigma=0.3, q=1), stats.lognorm(s=0.3, scale=math.exp(2)).cdf),
    (p(D.Q_BETA, a=2.0, b=2.0, q=0.1), stats.beta(2, 2).cdf),
]


@pytest.mark.parametrize(
    ("param", "cdf"), QUANTIZED, ids=[f"{c[0].distribution}-q{c[0].q}" for c in QUANTIZED]
)
def test_quantized_on_lattice_with_wandb_frequencies(param: Parameter, cdf: Callable) -> None:
    xs = draws(param)
    q = param.q
    assert all(type(x) is type(q) for x in xs), "int q gives ints, float q gives floats"
    ks = [round(x / q) for x in xs]
    assert all(math.isclose(x, k * q, abs_tol=1e-9) for x, k in zip(xs, ks, strict=True))
    counts = Counter(ks)
    support = list(range(min(ks), max(ks) + 1))
    expected = lattice_probabilities(cdf, q, support) * N
    observed = np.array([counts[k] for k in support], dtype=float)
    # Sparse bins (and anything outside the observed range) are merged into the last kept
    # bin, so chi-square's approximation holds and both sides still sum to N.
    keep = expected >= 5
    exp_bins, obs_bins = expected[keep], observed[keep]
    exp_bins[-1] += N - exp_bins.sum()
    obs_bins[-1] += N - obs_bins.sum()
    result = stats.chisquare(obs_bins, exp_bins)
    assert result.pvalue > ALPHA, (result, list(zip(support, observed, expected, strict=True)))


def test_categorical_uniform() -> None:
    values = ("a", "b", "c", "d", "e")
    counts = Counter(draws(p(D.CATEGORICAL, values=values)))
    assert set(counts) == set(values)
    assert stats.chisquare([counts[v] for v in values]).pvalue > ALPHA


def test_categorical_with_probabilities() -> None:
    values = (1, 2, 3, 4)
    probs = (0.1, 0.0, 0.6, 0.3)
    counts = Counter(draws(p(D.CATEGORICAL_W_PROBABILITIES, values=values, probabilities=probs)))
    assert counts[2] == 0
    observed = [counts[v] for v in (1, 3, 4)]
    assert stats.chisquare(observed, [N * 0.1, N * 0.6, N * 0.3]).pvalue > ALPHA


def test_int_uniform_inclusive_ints() -> None:
    xs = draws(p(D.INT_UNIFORM, min=-2, max=3))
    assert all(type(x) is int for x in xs)
    counts = Counter(xs)
    assert sorted(counts) == [-2, -1, 0, 1, 2, 3]  # both ends reached
    assert stats.chisquare([counts[k] for k in range(-2, 4)]).pvalue > ALPHA


def test_constant() -> None:
    assert draws(p(D.CONSTANT, value={"k": [1]}), n=3) == [{"k": [1]}] * 3


def test_log_uniform_bounds_are_exponents() -> None:
    xs = draws(p(D.LOG_UNIFORM, min=-11.5, max=-4.6))  # about 1e-5 .. 1e-2
    assert math.exp(-11.5) <= min(xs) and max(xs) <= math.exp(-4.6)
    assert min(xs) < 2e-5 and max(xs) > 5e-3


def test_round_half_even_like_numpy() -> None:
    for x in (0.5, 1.5, 2.5, -0.5, -1.5, 7.5):
        assert quantize(x, 1) == int(np.round(x))
        assert quantize(x, 1.0) == float(np.round(x))
    assert quantize(2.5, 1) == 2 and quantize(3.5, 1) == 4
    assert quantize(0.37, 0.25) == 0.25 and type(quantize(0.37, 0.25)) is float
    assert quantize(7, 5) == 5 and type(quantize(7, 5)) is int


def test_float_q_default_gives_floats() -> None:
    xs = draws(p(D.Q_NORMAL, mu=0, sigma=3), n=50)  # q defaults to 1.0
    assert all(type(x) is float and x.is_integer() for x in xs)


@pytest.mark.parametrize("distribution", list(D))
def test_same_seed_same_samples(distribution: Distribution) -> None:
    fields = {
        D.CONSTANT: {"value": 1},
        D.CATEGORICAL: {"values": tuple(range(10))},
        D.CATEGORICAL_W_PROBABILITIES: {"values": (1, 2, 3), "probabilities": (0.2, 0.3, 0.5)},
    }.get(distribution, {"min": 1, "max": 100, "q": 0.5})
    param = p(distribution, **fields)
    assert draws(param, seed=7, n=100) == draws(param, seed=7, n=100)
    if distribution is not D.CONSTANT:
        assert draws(param, seed=7, n=100) != draws(param, seed=8, n=100)


W_AND_B_SAME_DRAW = [
    {"distribution": "uniform", "min": -1.0, "max": 2.0},
    {"distribution": "q_uniform", "min": 0, "max": 100, "q": 7},
    {"distribution": "log_uniform", "min": -5.0, "max": 1.0},
    {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0},
    {"distribution": "q_log_uniform", "min": 0.0, "max": 6.0, "q": 4},
    {"distribution": "q_log_uniform_values", "min": 1.0, "max": 1000.0, "q": 8},
]


@pytest.mark.parametrize("config", W_AND_B_SAME_DRAW, ids=[c["distribution"] for c in W_AND_B_SAME_DRAW])
def test_same_uniform_draw_as_wandb_sweeps(config: dict) -> None:
    """Where W&B maps one U(0,1) draw through its ppf, the same draw gives the same value here."""
    params = pytest.importorskip("sweeps.params")
    wandb_param = params.HyperParameter("x", dict(config))
    fields = {k: v for k, v in config.items() if k != "distribution"}
    ours = p(D(config["distribution"]), **fields)
    for seed in range(200):
        u = random.Random(seed).random()
        mine = sample(ours, random.Random(seed))
        theirs = wandb_param.ppf(u)
        assert math.isclose(float(mine), float(theirs), rel_tol=1e-9, abs_tol=1e-12), (seed, mine, theirs)
