"""Tree-structured Parzen Estimator (Bergstra et al., 2011), multivariate (Falkner et al., 2018).

Trials are split by a quantile: the best ``gamma(n)`` are "good", the rest and every pending
trial "bad". Each group becomes a Parzen mixture over the coordinates of
:mod:`sweeper.optim.encoding`: one component per trial plus a prior component. Numeric
coordinates get truncated Gaussian kernels on [0, 1] (the prior there is uniform, since ``u`` is
the prior's CDF), each as wide as the larger gap to its neighbouring centres; categories get a
kernel that keeps most mass on the trial's own category and spreads the rest by the prior (less
the more trials the group has), with no order between categories. A parameter a trial does not
have (conditional spaces) contributes its prior to that trial's component. In each group, trials
older than its newest 25 (``TPEOptions.full_weight_newest``) weigh less the older they are.
Candidates are drawn from the good mixture and the one with the largest good/bad density ratio is
chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from sweeper.optim.encoding import SpaceCodec
from sweeper.optim.history import Observations, prior_draw, row_key

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class TPEOptions:
    n_startup: int = 10
    n_candidates: int = 24
    gamma_fraction: float = 0.1
    gamma_cap: int = 25
    prior_weight: float = 1.0
    full_weight_newest: int = 25  # in each group, trials older than this many newest weigh less

    def n_good(self, n: int) -> int:
        return max(1, min(math.ceil(self.gamma_fraction * n), self.gamma_cap))


class Parzen:
    """A mixture with one component per row of ``centres`` (NaN: parameter absent) plus the prior."""

    def __init__(
        self,
        codec: SpaceCodec,
        centres: np.ndarray,
        options: TPEOptions,
        weights: np.ndarray | None = None,
    ) -> None:
        self.codec = codec
        self.centres = centres
        n, p = centres.shape
        own = np.ones(n) if weights is None else weights
        self.weights = np.concatenate([own, [options.prior_weight]])
        self.weights /= self.weights.sum()
        # One bandwidth per centre and coordinate (n, p), never narrower than a lattice cell.
        self.bandwidth = (
            np.column_stack(
                [_neighbour_bandwidths(centres[:, j], _cell(c)) for j, c in enumerate(codec.codecs)]
            )
            if p
            else np.ones((n, 0))
        )
        # A categorical kernel adds prior_weight / (n + 1) to every choice, one to its own, as
        # Optuna's TPE does: the mass it spreads by the prior shrinks as the group grows.
        per_choice = options.prior_weight / (n + 1)
        self.spreads = [c.n_choices * per_choice / (1 + c.n_choices * per_choice) for c in codec.codecs]

    def log_pdf(self, rows: np.ndarray) -> np.ndarray:
        """log density of each row (full rows: no NaN)."""
        n = len(self.centres)
        total = np.zeros((len(rows), n + 1))
        total[:, n] = np.sum([self._prior_log(rows[:, j], j) for j in range(self.codec.n_params)], axis=0)
        for j, c in enumerate(self.codec.codecs):
            x = rows[:, j][:, None]
            mu = self.centres[:, j][None, :]
            present = ~np.isnan(mu)
            if c.is_categorical:
                prior = self._prior_probs(j)
                spread = self.spreads[j]
                own = (1.0 - spread) * (x == mu) + spread * prior[x.astype(int)]
                term = np.log(own)
            else:
                sd = self.bandwidth[:, j][None, :]
                m = np.where(present, mu, 0.5)
                z = (x - m) / sd
                norm = special.ndtr((1.0 - m) / sd) - special.ndtr(-m / sd)
                term = -0.5 * z * z - _LOG_SQRT_2PI - np.log(sd) - np.log(norm)
            total[:, :n] += np.where(present, term, self._prior_log(rows[:, j], j)[:, None])
        return special.logsumexp(total + np.log(self.weights)[None, :], axis=1)

    def _prior_probs(self, j: int) -> np.ndarray:
        c = self.codec.codecs[j]
        probs = np.asarray(c.param.probabilities or [1.0] * c.n_choices, dtype=float)
        return probs / probs.sum()

    def _prior_log(self, col: np.ndarray, j: int) -> np.ndarray:
        if self.codec.codecs[j].is_categorical:
            with np.errstate(divide="ignore"):
                return np.log(self._prior_probs(j)[col.astype(int)])
        return np.zeros(len(col))  # uniform on [0, 1]

    def sample(self, size: int, gen: np.random.Generator) -> np.ndarray:
        n = len(self.centres)
        which = gen.choice(n + 1, size=size, p=self.weights)
        out = self.codec.sample(size, gen)  # the prior component, and absent parameters
        for j, c in enumerate(self.codec.codecs):
            mu = np.append(self.centres[:, j], np.nan)[which]
            has = ~np.isnan(mu)
            if c.is_categorical:
                keep = has & (gen.random(size) >= self.spreads[j])
                out[keep, j] = mu[keep]
            else:
                sd = self.bandwidth[which[has], j]
                lo, hi = special.ndtr(-mu[has] / sd), special.ndtr((1.0 - mu[has]) / sd)
                u = lo + gen.random(has.sum()) * (hi - lo)
                out[has, j] = np.clip(mu[has] + sd * special.ndtri(np.clip(u, 1e-12, 1 - 1e-12)), 0, 1)
        return self.codec.snap(out)


def age_weights(n: int, newest: int = TPEOptions.full_weight_newest) -> np.ndarray:
    """The weight of each of ``n`` trials, oldest first: the ``newest`` count fully, older ones less
    the older they are (down to 1/n), as in Optuna's TPE; the model follows where the search went."""
    if n < newest:
        return np.ones(n)
    return np.concatenate([np.linspace(1.0 / n, 1.0, n - newest), np.ones(newest)])


def _by_age(members: np.ndarray, newest: int) -> np.ndarray:
    """Age weights of a group's trials (indices in trial order), in the order ``members`` lists them."""
    weights = np.empty(len(members))
    weights[np.argsort(members, kind="stable")] = age_weights(len(members), newest)
    return weights


def _neighbour_bandwidths(col: np.ndarray, floor: float) -> np.ndarray:
    """Each centre's bandwidth in one numeric coordinate: the wider of its gaps to the neighbouring
    centres (the prior's middle, 0.5, counted as one), as Optuna's TPE does. Clustered centres get
    narrow kernels and isolated ones wide, so the good group sharpens where trials pile up without
    one bandwidth for all. Clipped to [1 / min(100, kernels + 1), 1]; 1 where the parameter is absent.
    """
    out = np.ones(len(col))
    present = ~np.isnan(col)
    if not present.any():
        return out
    points = np.append(col[present], 0.5)
    order = np.argsort(points, kind="stable")
    padded = np.concatenate([[0.0], points[order], [1.0]])
    gaps = np.maximum(padded[1:-1] - padded[:-2], padded[2:] - padded[1:-1])
    # The ends look inward only, not at the edges of the cube (points holds the prior's 0.5 too).
    gaps[0], gaps[-1] = padded[2] - padded[1], padded[-2] - padded[-3]
    sigma = np.empty_like(gaps)
    sigma[order] = gaps
    low = max(1.0 / min(100.0, len(points) + 1.0), floor)
    out[present] = np.clip(sigma[:-1], low, 1.0)
    return out


def _cell(c) -> float:
    """Width of one lattice cell in ``u`` (0 for continuous parameters)."""
    if c.is_categorical:
        return 0.0
    if c.param.distribution.value == "int_uniform":
        return 0.5 / (c.param.max - c.param.min + 1)
    lo, hi = c._k_bounds()
    if math.isfinite(lo) and math.isfinite(hi):
        return 0.5 / max(hi - lo + 1, 1)
    return 0.0


def propose(
    codec: SpaceCodec, obs: Observations, gen: np.random.Generator, options: TPEOptions | None = None
) -> np.ndarray | None:
    """The next row: a prior draw during start-up, then the best good/bad ratio among candidates."""
    options = options or TPEOptions()
    if obs.n < options.n_startup:
        return prior_draw(codec, obs, gen, fresh_only=True)
    order = np.argsort(obs.y, kind="stable")
    n_good = options.n_good(obs.n)
    good = obs.X[order[:n_good]]
    bad = np.vstack([obs.X[order[n_good:]], obs.pending])  # pending: assumed not good
    # Each group weighs its own trials by their age within the group (pending trials are the newest).
    newest = options.full_weight_newest
    lower = Parzen(codec, good, options, _by_age(order[:n_good], newest))
    bad_weights = np.concatenate([_by_age(order[n_good:], newest), np.ones(len(obs.pending))])
    upper = Parzen(codec, bad, options, bad_weights)
    candidates = lower.sample(options.n_candidates, gen)
    ratio = lower.log_pdf(candidates) - upper.log_pdf(candidates)
    for i in np.argsort(-ratio, kind="stable"):
        if row_key(candidates[i]) not in obs.taken:
            return candidates[i]
    more = lower.sample(16 * options.n_candidates, gen)
    fresh = [row for row in more if row_key(row) not in obs.taken]
    return fresh[0] if fresh else None
