"""One step of Bayesian optimisation over a mixed space: which row to evaluate next.

The first trials fill the space (the candidate farthest from every trial so far, pending ones
included); after that a GP on the one-hot encoding is fitted to the warped losses and log EI is
maximised by gradient ascent on the numeric coordinates (:mod:`sweeper.optim.acqopt`) from some of
many random and local candidates (the best few and a few drawn by EI), then snapped onto the
lattice the parameters can take; after each ascent every choice of every categorical and one lattice
step of every integer are tried outright, since a continuous move in ``u`` never changes a
category. Pending
trials are believed to score max(posterior mean, incumbent): the GP treats them as known, so their
neighbourhood loses its appeal and parallel workers spread out (a kriging believer that never
believes a pending point improves). Once the best loss has stalled for a while, a growing share of
suggestions are space-filling draws again (see ``exploration_share``).
"""

from __future__ import annotations

import numpy as np

from sweeper.optim.acqopt import ascend
from sweeper.optim.acquisition import log_expected_improvement
from sweeper.optim.encoding import SpaceCodec
from sweeper.optim.gp import GaussianProcess, fit_gp
from sweeper.optim.history import Observations, prior_draw, row_key

FIT_ROWS = 150  # hyperparameters are fitted on at most this many rows ...
CONDITION_ROWS = 400  # ... and the posterior conditions on at most this many
N_RANDOM = 1024
N_LOCAL_STARTS = 8
N_LOCAL = 64
N_TOP_STARTS = 4  # of the N_LOCAL_STARTS ascent starts, the best; the rest are drawn by EI

ASCENT_ROUNDS = 2
N_SPACE_FILLING = 16
STALL_TRIALS = 20  # trials without a real improvement before some suggestions go anywhere


def n_initial(codec: SpaceCodec) -> int:
    return int(np.clip(codec.n_params + 2, 5, 10))


def warp(y: np.ndarray) -> np.ndarray:
    """Losses centred on their median and scaled, with the bad tail compressed by log1p.

    A few disastrous trials otherwise dominate the GP's fit and flatten the region that matters.
    """
    med = np.median(y)
    q25, q75 = np.percentile(y, [25, 75])
    scale = (q75 - q25) or (np.std(y) or 1.0)
    z = (y - med) / scale
    return np.where(z > 0, np.log1p(np.maximum(z, 0.0)), z)


def trials_since_improvement(y: np.ndarray) -> int:
    """Entries of ``y`` since the best loss last fell by more than a thousandth of its gap to the median.

    Creeping gains (an edge of the box refined in the fourth decimal) count only once they add up.
    """
    tol = 1e-3 * (float(np.median(y) - np.min(y)) or float(np.std(y)) or 1.0)
    best, last = np.inf, 0
    for i, value in enumerate(y):
        if value < best - tol:
            best, last = value, i
    return len(y) - 1 - last


def stalled_for(codec: SpaceCodec, obs: Observations) -> int:
    """Trials since the best measured loss really improved, not counting the initial design, so the
    model makes ``STALL_TRIALS`` suggestions of its own before the rule acts. Imputed values (a
    failed trial given the best value, say) are left out: they would hold the best still for good."""
    measured = obs.y[obs.measured]
    since = trials_since_improvement(measured) if len(measured) else obs.n
    return min(since, obs.n - n_initial(codec))


def exploration_share(stalled: int) -> float:
    """The share of suggestions drawn anywhere after ``stalled`` trials without improvement: none
    for the first ``STALL_TRIALS``, then rising by a point per trial, up to a half."""
    return min(0.5, max(0.0, (stalled - STALL_TRIALS) / 100))


def _fill_missing(rows: np.ndarray, codec: SpaceCodec, gen: np.random.Generator) -> np.ndarray:
    missing = np.isnan(rows)
    if missing.any():
        rows = rows.copy()
        rows[missing] = codec.sample(len(rows), gen)[missing]
    return rows


def space_filling(codec: SpaceCodec, obs: Observations, gen: np.random.Generator) -> np.ndarray | None:
    """The prior draw, out of a few, farthest from every trial so far (maximin in the one-hot cube),
    running ones included; None when no draw is new.

    Few candidates on purpose: maximin over many pushes the whole initial design into the corners
    of the cube, where optima rarely are; a few still keep the trials apart.
    """
    candidates = codec.sample(N_SPACE_FILLING, gen)
    existing = np.vstack([obs.X, obs.pending])
    if len(existing) == 0:
        return candidates[0]
    a, b = codec.one_hot(candidates), codec.one_hot(_fill_missing(existing, codec, gen))
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).min(1)
    for i in np.argsort(-d):
        if row_key(candidates[i]) not in obs.taken:
            return candidates[i]
    return prior_draw(codec, obs, gen, fresh_only=True)  # a small space nearly used up: draw on


def _training_rows(y: np.ndarray, cap: int, gen: np.random.Generator) -> np.ndarray:
    """All rows, or when there are too many the best third, the most recent sixth and a random rest."""
    n = len(y)
    if n <= cap:
        return np.arange(n)
    chosen = set(np.argsort(y, kind="stable")[: cap // 3].tolist())
    chosen |= set(range(n - cap // 6, n))
    rest = np.array(sorted(set(range(n)) - chosen))
    chosen |= set(gen.choice(rest, size=cap - len(chosen), replace=False).tolist())
    return np.array(sorted(chosen))


def _perturb(rows: np.ndarray, scale: float, codec: SpaceCodec, gen: np.random.Generator) -> np.ndarray:
    out = rows + gen.normal(0.0, scale, rows.shape)
    flip = gen.random(rows.shape) < max(scale, 1.0 / max(codec.n_params, 1))
    fresh = codec.sample(len(rows), gen)
    for j, c in enumerate(codec.codecs):
        if c.is_categorical:
            out[:, j] = np.where(flip[:, j], fresh[:, j], rows[:, j])
    return codec.snap(np.clip(out, 0.0, 1.0))


def _discrete_neighbours(rows: np.ndarray, codec: SpaceCodec) -> np.ndarray:
    """Every row with one categorical set to each of its other choices, or one lattice parameter
    moved one step up or down: moves a Gaussian perturbation of ``u`` rarely or never makes."""
    out = []
    for j, c in enumerate(codec.codecs):
        if c.is_categorical:
            for k in range(c.n_choices):
                moved = rows.copy()
                moved[:, j] = k
                out.append(moved[rows[:, j] != k])
        elif (cell := _lattice_step(c)) > 0:
            for step in (-cell, cell):
                moved = rows.copy()
                moved[:, j] = rows[:, j] + step
                out.append(codec.snap(np.clip(moved, 0.0, 1.0)))
    return np.vstack(out) if out else rows[:0]


def _lattice_step(c) -> float:
    """The distance in ``u`` between neighbouring lattice points of a finite lattice, else 0."""
    if c.param.distribution.value == "int_uniform":
        return 1.0 / (c.param.max - c.param.min + 1)
    lo, hi = c._k_bounds()
    if np.isfinite(lo) and np.isfinite(hi) and c.param.distribution.value in ("q_uniform", "q_beta"):
        return 1.0 / max(hi - lo, 1)
    return 0.0


def _discrete_step(current, current_scores, score, codec: SpaceCodec):
    """Each row moved to its best discrete neighbour (every choice of every categorical tried),
    when that scores higher."""
    for i in range(len(current)):
        near = _discrete_neighbours(current[i : i + 1], codec)
        if len(near):
            s = score(near)
            k = int(np.argmax(s))
            if s[k] > current_scores[i]:
                current[i], current_scores[i] = near[k], s[k]
    return current, current_scores


def _ascent_starts(scores: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Indices of the best few candidates and of a few more drawn with probability proportional
    to their EI (``scores`` are log EI), as Optuna's GP sampler does: the best candidates are
    mostly perturbations of the incumbent and climb the same hill, the drawn ones reach other
    modes of the acquisition."""
    order = np.argsort(-scores, kind="stable")
    top = order[:N_TOP_STARTS]
    rest = order[N_TOP_STARTS:]
    weights = np.nan_to_num(np.exp(scores[rest] - scores[top[0]]))  # a NaN score: never drawn
    k = min(N_LOCAL_STARTS - N_TOP_STARTS, int((weights > 0).sum()))
    if k == 0:
        return top
    drawn = gen.choice(rest, size=k, replace=False, p=weights / weights.sum())
    return np.concatenate([top, drawn])


def fit_model(codec: SpaceCodec, obs: Observations, gen: np.random.Generator) -> GaussianProcess:
    X = codec.one_hot(_fill_missing(obs.X, codec, gen))
    y = warp(obs.y)
    rows = _training_rows(y, CONDITION_ROWS, gen)
    sub = _training_rows(y[rows], FIT_ROWS, gen)
    return fit_gp(X[rows], y[rows], gen, fit_rows=sub, groups=codec.groups)


def propose(codec: SpaceCodec, obs: Observations, gen: np.random.Generator) -> np.ndarray | None:
    """The next row to evaluate; None when every candidate found is already in the history."""
    if obs.n < n_initial(codec):
        return space_filling(codec, obs, gen)
    # A GP can settle for good on a spot it extrapolates well (an edge of the box, a ripple of a
    # plateau) and refine it forever. Once the best has stalled, more and more draws go anywhere,
    # so however long it runs the search keeps the reach of random search (SMAC interleaves random
    # configurations for the same reason, from the start).
    if (share := exploration_share(stalled_for(codec, obs))) > 0 and gen.random() < share:
        if (row := space_filling(codec, obs, gen)) is not None:  # else the model finds a new one
            return row
    gp = fit_model(codec, obs, gen)
    y = warp(obs.y)
    # The threshold EI improves on: the best posterior mean at a trial, not the best raw value.
    # Where the GP explains ripples as noise (Ackley, Rastrigin), one lucky trial would otherwise
    # set a bar the model cannot believe, and EI would spread out like random search.
    best = float(gp.predict(gp.X)[0].min())
    if len(obs.pending):
        P = codec.one_hot(_fill_missing(obs.pending, codec, gen))
        mean, _ = gp.predict(P)
        gp = gp.condition(P, np.maximum(mean, best))

    def score(rows: np.ndarray) -> np.ndarray:
        mean, var = gp.predict(codec.one_hot(rows))
        return log_expected_improvement(mean, var, best)

    known = _fill_missing(obs.X, codec, gen)
    incumbents = known[np.argsort(y, kind="stable")[:N_LOCAL_STARTS]]
    pool = [codec.sample(N_RANDOM, gen), _perturb(np.repeat(incumbents, N_LOCAL, 0), 0.1, codec, gen)]
    pool_scores = [score(p) for p in pool]
    allrows, allscores = np.vstack(pool), np.concatenate(pool_scores)
    # Local refinement from the best candidates and the best trial: gradient ascent on the
    # numeric coordinates, then onto the lattice, then every categorical choice and lattice step.
    current = np.vstack([allrows[_ascent_starts(allscores, gen)], incumbents[:1]])
    for _ in range(ASCENT_ROUNDS):
        current = codec.snap(ascend(gp, best, current, codec))
        current_scores = score(current)
        current, current_scores = _discrete_step(current, current_scores, score, codec)
        pool.append(current.copy())
        pool_scores.append(current_scores.copy())
    allrows, allscores = np.vstack(pool), np.concatenate(pool_scores)
    for i in np.argsort(-allscores, kind="stable"):
        if row_key(allrows[i]) not in obs.taken:
            return allrows[i]
    return None
