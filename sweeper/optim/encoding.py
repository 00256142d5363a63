"""Parameters <-> numbers a model can use.

Every searchable parameter gets one coordinate ``u`` in [0, 1] (numeric kinds) or a category index.
``u`` is the parameter's prior CDF, made linear: linear for ``uniform``, linear in log x for the
``log_uniform*`` / ``inv_log_uniform*`` families, the normal CDF for ``normal``, the beta CDF for
``beta``. So uniform draws of ``u`` are draws from the prior, and a model on ``u`` sees log-scaled
parameters in log space. Integers and quantised values snap to their lattice. Constants are skipped.
Categories carry no order: the GP sees them one-hot (:meth:`SpaceCodec.one_hot`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from sweeper.spec.distributions import QUANTIZED, quantize
from sweeper.spec.model import Distribution, Parameter
from sweeper.trials import config_key

D = Distribution
_EPS = 1e-9  # keeps CDF-warped coordinates off 0 and 1, where ppf is infinite
_LOG = frozenset({D.LOG_UNIFORM, D.Q_LOG_UNIFORM, D.LOG_UNIFORM_VALUES, D.Q_LOG_UNIFORM_VALUES})
_INV_LOG = frozenset({D.INV_LOG_UNIFORM, D.INV_LOG_UNIFORM_VALUES})
_CATEGORICAL = frozenset({D.CATEGORICAL, D.CATEGORICAL_W_PROBABILITIES})


def _value_key(value: Any) -> str:
    return config_key({"v": value})


@dataclass(frozen=True)
class Codec:
    """One searchable parameter. ``n_choices`` > 0 for categorical parameters."""

    param: Parameter
    n_choices: int = 0

    @property
    def is_categorical(self) -> bool:
        return self.n_choices > 0

    @property
    def is_int(self) -> bool:
        p = self.param
        return p.distribution is D.INT_UNIFORM or (p.distribution in QUANTIZED and isinstance(p.q, int))

    # -- numeric kinds: u (array) <-> value (array) --------------------------------------------------
    def _log_bounds(self) -> tuple[float, float]:
        p, d = self.param, self.param.distribution
        if d in (D.LOG_UNIFORM, D.Q_LOG_UNIFORM):
            return float(p.min), float(p.max)  # base-e exponents
        if d is D.INV_LOG_UNIFORM:
            return -float(p.max), -float(p.min)  # x = exp(-t), t in [min, max]
        return math.log(p.min), math.log(p.max)

    def values_of(self, u: np.ndarray) -> np.ndarray:
        """Parameter values for coordinates ``u`` (already on the lattice for int/quantised kinds)."""
        p, d = self.param, self.param.distribution
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        if d is D.INT_UNIFORM:
            n = p.max - p.min + 1
            return np.minimum(np.floor(u * n), n - 1) + p.min
        if d in (D.UNIFORM, D.Q_UNIFORM):
            x = p.min + u * (p.max - p.min)
        elif d in _LOG or d in _INV_LOG:
            lo, hi = self._log_bounds()
            x = np.clip(np.exp(lo + u * (hi - lo)), *self._value_bounds())
        elif d in (D.NORMAL, D.Q_NORMAL):
            x = p.mu + p.sigma * special.ndtri(np.clip(u, _EPS, 1 - _EPS))
        elif d in (D.LOG_NORMAL, D.Q_LOG_NORMAL):
            x = np.exp(p.mu + p.sigma * special.ndtri(np.clip(u, _EPS, 1 - _EPS)))
        elif d in (D.BETA, D.Q_BETA):
            x = special.betaincinv(p.a, p.b, np.clip(u, _EPS, 1 - _EPS))
        else:
            raise ValueError(f"{p.name}: {d} has no numeric coordinate")
        if d in QUANTIZED:
            k = np.round(x / p.q)
            lo_k, hi_k = self._k_bounds()
            x = np.clip(k, lo_k, hi_k) * p.q
        return x

    def _value_bounds(self) -> tuple[float, float]:
        # The bounds as written when they are values, so rounding in exp(log(x)) never leaves them.
        p, d = self.param, self.param.distribution
        if d in (D.LOG_UNIFORM_VALUES, D.Q_LOG_UNIFORM_VALUES, D.INV_LOG_UNIFORM_VALUES):
            return float(p.min), float(p.max)
        lo, hi = self._log_bounds()
        return math.exp(lo), math.exp(hi)

    def _k_bounds(self) -> tuple[float, float]:
        """The lattice indices a quantised parameter may take: those its sampler can return."""
        p, d = self.param, self.param.distribution
        if d is D.Q_UNIFORM:
            return round(p.min / p.q), round(p.max / p.q)
        if d in (D.Q_LOG_UNIFORM, D.Q_LOG_UNIFORM_VALUES):
            lo, hi = self._log_bounds()
            return round(math.exp(lo) / p.q), round(math.exp(hi) / p.q)
        if d is D.Q_BETA:
            return 0, round(1 / p.q)
        return -np.inf, np.inf  # q_normal, q_log_normal: unbounded

    def coords_of(self, x: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`values_of`; values outside the prior's support are clipped."""
        p, d = self.param, self.param.distribution
        x = np.asarray(x, dtype=float)
        if d is D.INT_UNIFORM:
            u = (x - p.min + 0.5) / (p.max - p.min + 1)
        elif d in (D.UNIFORM, D.Q_UNIFORM):
            span = p.max - p.min
            u = (x - p.min) / span if span > 0 else np.full_like(x, 0.5)
        elif d in _LOG or d in _INV_LOG:
            lo, hi = self._log_bounds()
            u = (np.log(np.maximum(x, 1e-300)) - lo) / (hi - lo) if hi > lo else np.full_like(x, 0.5)
        elif d in (D.NORMAL, D.Q_NORMAL):
            u = special.ndtr((x - p.mu) / p.sigma)
        elif d in (D.LOG_NORMAL, D.Q_LOG_NORMAL):
            u = special.ndtr((np.log(np.maximum(x, 1e-300)) - p.mu) / p.sigma)
        elif d in (D.BETA, D.Q_BETA):
            u = special.betainc(p.a, p.b, np.clip(x, 0.0, 1.0))
        else:
            raise ValueError(f"{p.name}: {d} has no numeric coordinate")
        return np.clip(u, 0.0, 1.0)

    def snap(self, u: np.ndarray) -> np.ndarray:
        """Coordinates moved onto what the parameter can really take (lattice points)."""
        if self.param.distribution is D.INT_UNIFORM or self.param.distribution in QUANTIZED:
            return self.coords_of(self.values_of(u))
        return np.clip(u, 0.0, 1.0)

    # -- single values ---------------------------------------------------------------------------------
    def encode(self, value: Any) -> float | None:
        """``u`` (or the category index) of one value; None when it is missing or not understood."""
        if self.is_categorical:
            keys = [_value_key(v) for v in self.param.values]
            key = _value_key(value)
            return float(keys.index(key)) if key in keys else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(self.coords_of(np.array([value]))[0])

    def decode(self, coord: float) -> Any:
        if self.is_categorical:
            return self.param.values[int(coord)]
        x = float(self.values_of(np.array([coord]))[0])
        p = self.param
        if p.distribution is D.INT_UNIFORM:
            return int(round(x))
        if p.distribution in QUANTIZED:
            return quantize(x, p.q)  # exactly the sampler's lattice value and type
        return x


class SpaceCodec:
    """All searchable parameters of a space, in spec order."""

    def __init__(self, parameters: Sequence[Parameter]) -> None:
        self.parameters = tuple(parameters)
        self.codecs = tuple(
            Codec(p, len(p.values) if p.distribution in _CATEGORICAL else 0)
            for p in parameters
            if p.distribution is not D.CONSTANT and not _is_fixed(p)
        )
        self.fixed = {p.path: _fixed_value(p) for p in parameters if _is_fixed(p)}
        widths = [c.n_choices if c.is_categorical else 1 for c in self.codecs]
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        self.n_params = len(self.codecs)
        self.width = int(self.offsets[-1])  # columns of the one-hot form
        # The parameter each one-hot column belongs to (a categorical's columns share a length scale).
        self.groups = np.repeat(np.arange(self.n_params), widths).astype(int)

    @property
    def paths(self) -> list[tuple[str, ...]]:
        return [c.param.path for c in self.codecs]

    def encode(self, flat: Mapping[tuple[str, ...], Any]) -> np.ndarray:
        """One row of coordinates (NaN where a parameter is absent: conditional spaces)."""
        row = np.full(self.n_params, np.nan)
        for j, c in enumerate(self.codecs):
            if c.param.path in flat:
                coord = c.encode(flat[c.param.path])
                row[j] = np.nan if coord is None else coord
        return row

    def decode(self, row: np.ndarray) -> dict[tuple[str, ...], Any]:
        values = {c.param.path: c.decode(row[j]) for j, c in enumerate(self.codecs)}
        return {**self.fixed, **values}

    def snap(self, rows: np.ndarray) -> np.ndarray:
        """Rows moved onto the lattice; categorical indices rounded into range."""
        out = np.array(rows, dtype=float, copy=True)
        for j, c in enumerate(self.codecs):
            if c.is_categorical:
                out[:, j] = np.clip(np.floor(out[:, j]), 0, c.n_choices - 1)
            else:
                out[:, j] = c.snap(out[:, j])
        return out

    def sample(self, n: int, gen: np.random.Generator) -> np.ndarray:
        """``n`` rows drawn from the prior (uniform in ``u``, categories by their probabilities)."""
        rows = gen.random((n, self.n_params))
        for j, c in enumerate(self.codecs):
            if c.is_categorical:
                probs = np.asarray(c.param.probabilities or [1.0] * c.n_choices, dtype=float)
                rows[:, j] = gen.choice(c.n_choices, size=n, p=probs / probs.sum())
        return self.snap(rows)

    def one_hot(self, rows: np.ndarray) -> np.ndarray:
        """The GP's input: numeric coordinates as they are, categories one-hot (no implied order).

        A missing numeric value sits at 0.5 and a missing category is all zeros.
        """
        rows = np.atleast_2d(rows)
        out = np.zeros((rows.shape[0], self.width))
        for j, c in enumerate(self.codecs):
            col = rows[:, j]
            start = self.offsets[j]
            if c.is_categorical:
                ok = ~np.isnan(col)
                out[np.flatnonzero(ok), start + col[ok].astype(int)] = 1.0
            else:
                out[:, start] = np.where(np.isnan(col), 0.5, col)
        return out


def _is_fixed(p: Parameter) -> bool:
    # A one-value space is a constant in all but name: nothing to model.
    if p.distribution in _CATEGORICAL:
        return len(p.values) == 1
    return p.distribution is D.INT_UNIFORM and p.min == p.max


def _fixed_value(p: Parameter) -> Any:
    if p.distribution is D.CONSTANT:
        return p.value
    return p.values[0] if p.distribution in _CATEGORICAL else p.min
