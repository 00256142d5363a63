"""``method: bohb``: Hyperband's allocation with a model-based sampler (Falkner et al., 2018).

The allocation and stopping are those of ``method: hyperband``. New configurations come from a
density model instead of at random (a third of them stay random, so the model never starves):
at the largest budget with enough results, the trials are split into the best 15% and the rest,
a Parzen (kernel density) estimator is fitted to each, candidates are drawn around the good
configurations, and the one with the highest ratio good/bad density is run. "Enough" means both
sets hold more points than there are searched parameters, as in the reference implementation
(HpBandSter): the two densities are fitted on disjoint sets, so their ratio says something.

A trial's result at a budget is its value of the metric at that iteration when its history is
loaded; otherwise a finished trial counts at the full budget and a stopped one at the iteration
its stop reason records, both with their last logged value.
"""

from __future__ import annotations

import math
import random
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sweeper.spec import SweepSpec, build_config, config_key, flatten_config
from sweeper.spec.distributions import QUANTIZED, quantize
from sweeper.spec.model import Distribution, Goal, Parameter
from sweeper.stopping.base import iteration_points
from sweeper.stopping.build import resource_of
from sweeper.stopping.rungs import rung_levels
from sweeper.strategies.base import Suggestion
from sweeper.strategies.hyperband import HyperbandSearch
from sweeper.strategies.registry import register
from sweeper.trials import Trial, TrialState

D = Distribution
_STOPPED_AT = re.compile(r"at iteration (\d+)")
_NORMAL = statistics.NormalDist()
_EDGE = 1e-6  # unit coordinates are kept inside (0, 1) so logs and inverse cdfs stay finite


# --- the unit cube: every searched parameter as a coordinate in [0, 1] (or a category index) ---


@dataclass(frozen=True)
class Axis:
    parameter: Parameter
    categories: int = 0  # > 0: a categorical axis with this many values

    def encode(self, value: Any) -> float | None:
        p = self.parameter
        if self.categories:
            try:
                return float(p.values.index(value))
            except ValueError:
                return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        try:
            return min(1 - _EDGE, max(_EDGE, _to_unit(p, float(value))))
        except (ValueError, ZeroDivisionError):
            return None

    def decode(self, u: float) -> Any:
        p = self.parameter
        if self.categories:
            return p.values[int(u)]
        u = min(1 - _EDGE, max(_EDGE, u))
        if p.distribution is D.INT_UNIFORM:
            return min(p.max, p.min + int(u * (p.max - p.min + 1)))
        x = _from_unit(p, u)
        return quantize(x, p.q) if p.distribution in QUANTIZED else x


def _to_unit(p: Parameter, x: float) -> float:
    d = p.distribution
    if d is D.INT_UNIFORM:
        return (x - p.min + 0.5) / (p.max - p.min + 1)
    if d in (D.UNIFORM, D.Q_UNIFORM):
        return (x - p.min) / (p.max - p.min)
    if d in (D.LOG_UNIFORM, D.Q_LOG_UNIFORM):
        return (math.log(x) - p.min) / (p.max - p.min)
    if d in (D.LOG_UNIFORM_VALUES, D.Q_LOG_UNIFORM_VALUES):
        return (math.log(x) - math.log(p.min)) / (math.log(p.max) - math.log(p.min))
    if d is D.INV_LOG_UNIFORM:
        return (-math.log(x) - p.min) / (p.max - p.min)
    if d is D.INV_LOG_UNIFORM_VALUES:
        return (math.log(p.max) - math.log(x)) / (math.log(p.max) - math.log(p.min))
    if d in (D.NORMAL, D.Q_NORMAL):
        return _NORMAL.cdf((x - p.mu) / p.sigma)
    if d in (D.LOG_NORMAL, D.Q_LOG_NORMAL):
        return _NORMAL.cdf((math.log(x) - p.mu) / p.sigma)
    return x  # beta, q_beta: already in [0, 1]


def _from_unit(p: Parameter, u: float) -> float:
    d = p.distribution
    if d in (D.UNIFORM, D.Q_UNIFORM):
        return p.min + u * (p.max - p.min)
    if d in (D.LOG_UNIFORM, D.Q_LOG_UNIFORM):
        return math.exp(p.min + u * (p.max - p.min))
    if d in (D.LOG_UNIFORM_VALUES, D.Q_LOG_UNIFORM_VALUES):
        return math.exp(math.log(p.min) + u * (math.log(p.max) - math.log(p.min)))
    if d is D.INV_LOG_UNIFORM:
        return math.exp(-(p.min + u * (p.max - p.min)))
    if d is D.INV_LOG_UNIFORM_VALUES:
        return math.exp(math.log(p.max) - u * (math.log(p.max) - math.log(p.min)))
    if d in (D.NORMAL, D.Q_NORMAL):
        return p.mu + p.sigma * _NORMAL.inv_cdf(u)
    if d in (D.LOG_NORMAL, D.Q_LOG_NORMAL):
        return math.exp(p.mu + p.sigma * _NORMAL.inv_cdf(u))
    return u


def axes_of(spec: SweepSpec, skip: str | None) -> list[Axis]:
    out = []
    for p in spec.parameters:
        if p.distribution is D.CONSTANT or p.name == skip:
            continue
        categorical = p.distribution in (D.CATEGORICAL, D.CATEGORICAL_W_PROBABILITIES)
        out.append(Axis(p, categories=len(p.values) if categorical else 0))
    return out


# --- the density model (numpy only here, imported when a model is fitted) ---


@dataclass(frozen=True)
class ParzenSettings:
    top_fraction: float = 0.15
    candidates: int = 64
    bandwidth_factor: float = 3.0
    min_bandwidth: float = 1e-3


def propose(
    x: Any, losses: Any, categories: Sequence[int], settings: ParzenSettings, seed: int
) -> list[list[float]]:
    """Candidates (unit coordinates) in order of decreasing good/bad density ratio.

    ``x``: n x d unit coordinates (categorical axes hold indices); ``losses``: n values, smaller
    is better. Pure maths: no spec, no trials.
    """
    import numpy as np

    x = np.asarray(x, dtype=float)
    losses = np.asarray(losses, dtype=float)
    d = x.shape[1]
    if not can_fit(len(losses), d, settings):
        raise ValueError(f"{len(losses)} results cannot fit a model of {d} dimensions (see can_fit)")
    good_rows, bad_rows = split(losses.tolist(), d, settings)
    good, bad = x[good_rows], x[bad_rows]
    cats = np.asarray(categories)
    bw_good, bw_bad = _bandwidths(good, cats, settings), _bandwidths(bad, cats, settings)
    gen = np.random.default_rng(seed)
    picks = good[gen.integers(0, len(good), settings.candidates)]
    wide = np.minimum(bw_good * settings.bandwidth_factor, 0.5)
    cand = picks.copy()
    for j in range(d):
        if cats[j]:
            flip = gen.random(len(cand)) < wide[j]
            cand[flip, j] = gen.integers(0, cats[j], int(flip.sum()))
        else:
            cand[:, j] = np.clip(picks[:, j] + gen.normal(0.0, wide[j], len(cand)), _EDGE, 1 - _EDGE)
    score = _log_density(cand, good, bw_good, cats) - _log_density(cand, bad, bw_bad, cats)
    return [cand[i].tolist() for i in np.argsort(-score, kind="stable")]


def good_count(n: int, dims: int, settings: ParzenSettings) -> int:
    """How many of ``n`` results form the good set: the top fraction, at least ``dims + 1``."""
    return max(dims + 1, int(settings.top_fraction * n))


def split(losses: Sequence[float], dims: int, settings: ParzenSettings) -> tuple[list[int], list[int]]:
    """Row indices of the good results (the smallest losses) and of the bad ones (all the others)."""
    order = sorted(range(len(losses)), key=lambda i: (losses[i], i))
    n_good = good_count(len(losses), dims, settings)
    return order[:n_good], order[n_good:]


def can_fit(n: int, dims: int, settings: ParzenSettings) -> bool:
    """Whether ``n`` results split into a good and a disjoint bad set of ``dims + 1`` points each."""
    return n - good_count(n, dims, settings) >= dims + 1


def _bandwidths(points: Any, cats: Any, settings: ParzenSettings) -> Any:
    import numpy as np

    n, d = points.shape
    scott = n ** (-1.0 / (d + 4))
    std = points.std(axis=0) if n > 1 else np.full(d, 0.25)
    bw = np.where(cats > 0, 0.5 * scott, 1.06 * std * scott)
    return np.clip(bw, settings.min_bandwidth, np.where(cats > 0, 0.5, 1.0))


def _log_density(at: Any, points: Any, bw: Any, cats: Any) -> Any:
    """log of the mean over ``points`` of product kernels: Gaussian on continuous axes,
    Aitchison-Aitken on categorical ones."""
    import numpy as np

    diff = at[:, None, :] - points[None, :, :]
    cont = cats == 0
    log_k = np.zeros(diff.shape)
    z = diff[..., cont] / bw[cont]
    log_k[..., cont] = -0.5 * z**2 - np.log(bw[cont] * math.sqrt(2 * math.pi))
    if (~cont).any():
        k = np.maximum(cats[~cont], 2)
        same = np.abs(diff[..., ~cont]) < 0.5
        b = bw[~cont]
        log_k[..., ~cont] = np.where(same, np.log1p(-b), np.log(b / (k - 1)))
    per_point = log_k.sum(axis=2)
    top = per_point.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(per_point - top).mean(axis=1, keepdims=True)))[:, 0]


def model_budget(counts: Mapping[int, int], dims: int, settings: ParzenSettings) -> int | None:
    """The largest budget whose results (``counts``: how many per budget) can fit the model."""
    fit = [b for b, n in counts.items() if can_fit(n, dims, settings)]
    return max(fit) if fit else None


# --- the strategy ---


@register
class BohbSearch(HyperbandSearch):
    method = "bohb"
    needs_history = True  # results at each rung come from the trials' histories of the metric
    random_fraction = 1 / 3
    settings = ParzenSettings()

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        resource = resource_of(spec)
        self._resource_name = resource.name if resource else None
        self._axes = axes_of(spec, self._resource_name)
        if resource is not None and resource.max is not None:
            self._levels = [*rung_levels(resource.min, resource.eta, resource.max), resource.max]
        else:
            self._levels = []

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        explore = rng.random() < self.random_fraction
        seed = rng.getrandbits(32)
        if not explore and self._axes:
            config = self._from_model(trials, seed)
            if config is not None:
                return Suggestion.run(config)
        return super().suggest(trials, rng)

    def budget_results(self, trials: Sequence[Trial]) -> dict[int, list[tuple[list[float], float]]]:
        """(unit coordinates, loss) of every result, by budget."""
        metric = self.spec.metric
        if metric is None:
            return {}
        sign = -1.0 if metric.goal is Goal.MAXIMIZE else 1.0
        out: dict[int, list[tuple[list[float], float]]] = {}
        for trial in trials:
            coords = self._encode(trial.config)
            if coords is None:
                continue
            for budget, value in self._results_of(trial, metric.name):
                if math.isfinite(value):
                    out.setdefault(budget, []).append((coords, sign * value))
        return out

    def _results_of(self, trial: Trial, name: str) -> list[tuple[int, float]]:
        if trial.history is not None:  # budgets counted as the stopping rule counts iterations
            values = [p.value for p in iteration_points(trial.points(name))]
            return [(level, values[level - 1]) for level in self._levels if level <= len(values)]
        value = trial.metric(name)
        if value is None or not self._levels:
            return []
        if trial.state is TrialState.FINISHED:
            return [(self._levels[-1], value)]
        match = _STOPPED_AT.search(trial.stop_reason or trial.stop_requested or "")
        if trial.state is TrialState.STOPPED and match and int(match.group(1)) in self._levels:
            return [(int(match.group(1)), value)]
        return []

    def _encode(self, config: Mapping[str, Any]) -> list[float] | None:
        flat = flatten_config(config, self.spec)  # a dict-valued parameter stays one value
        coords = []
        for axis in self._axes:
            u = axis.encode(flat.get(axis.parameter.path))
            if u is None:
                return None
            coords.append(u)
        return coords

    def _from_model(self, trials: Sequence[Trial], seed: int) -> dict[str, Any] | None:
        results = self.budget_results(trials)
        budget = model_budget({b: len(r) for b, r in results.items()}, len(self._axes), self.settings)
        if budget is None:
            return None
        data = results[budget]
        cats = [a.categories for a in self._axes]
        ranked = propose([c for c, _ in data], [v for _, v in data], cats, self.settings, seed)
        taken = {t.config_key for t in trials} if self._unique else set()
        for coords in ranked:
            config = self._decode(coords)
            if config_key(config) not in taken:
                return config
        return None

    def _decode(self, coords: Sequence[float]) -> dict[str, Any]:
        values = {p.path: p.value for p in self.spec.parameters if p.distribution is D.CONSTANT}
        for axis, u in zip(self._axes, coords, strict=True):
            values[axis.parameter.path] = axis.decode(u)
        return build_config(self.spec, values)
