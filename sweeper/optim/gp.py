"""A Gaussian process with a Matern-5/2 ARD kernel, hyperparameters by maximum a posteriori.

Inputs live in the unit cube (see :mod:`sweeper.optim.encoding`); targets are standardised here.
Input columns may be tied into groups that share one length scale: the one-hot columns of a
categorical parameter form one group, so the kernel sees how many categories differ (a Hamming
distance) rather than which, and a category seen in a few lucky trials cannot claim a short scale
of its own.
The log marginal likelihood and its gradient are written out, so L-BFGS needs no finite
differences; weak log-normal priors keep length scales and noise away from degenerate fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
_LOG_NOISE_BOUNDS = (math.log(1e-6), math.log(0.5))
_LOG_SCALE_BOUNDS = (math.log(0.01), math.log(50.0))
_LOG_SIGNAL_BOUNDS = (math.log(0.05), math.log(20.0))
_LOG_NOISE_PRIOR = (math.log(1e-3), 2.0)  # (mean, sd) of log noise variance (targets standardised)
_LOG_SIGNAL_PRIOR = (0.0, 1.0)
_LOG_SCALE_SD = 1.5


def _scale_prior_mean(dim: int) -> float:
    # Longer length scales in more dimensions: distances in the unit cube grow like sqrt(dim).
    return math.log(0.5) + 0.5 * math.log(max(dim, 1))


def _sq_dists(A: np.ndarray, B: np.ndarray, inv_scales: np.ndarray) -> np.ndarray:
    a = A * inv_scales
    b = B * inv_scales
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def matern52(A: np.ndarray, B: np.ndarray, scales: np.ndarray, signal: float) -> np.ndarray:
    r = np.sqrt(_sq_dists(A, B, 1.0 / scales))
    return signal * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * np.exp(-_SQRT5 * r)


@dataclass(frozen=True)
class GaussianProcess:
    X: np.ndarray
    scales: np.ndarray  # one length scale per input column (ARD)
    signal: float  # kernel variance, in standardised units
    noise: float  # noise variance, in standardised units
    y_mean: float
    y_std: float
    chol: np.ndarray  # lower Cholesky factor of K + noise I
    alpha: np.ndarray  # (K + noise I)^-1 (y - mean) / std

    def predict(self, Xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the latent function at ``Xs``, in target units."""
        Ks = matern52(np.atleast_2d(Xs), self.X, self.scales, self.signal)
        mean = Ks @ self.alpha
        v = linalg.solve_triangular(self.chol, Ks.T, lower=True, check_finite=False)
        var = np.maximum(self.signal - (v * v).sum(0), 1e-12)
        return self.y_mean + self.y_std * mean, var * self.y_std**2

    def condition(self, X_new: np.ndarray, y_new: np.ndarray) -> GaussianProcess:
        """The same kernel, conditioned also on (X_new, y_new): how pending points are believed."""
        X = np.vstack([self.X, X_new])
        y = np.concatenate([self.y_mean + self.y_std * self._y_std_units(), y_new])
        return _build(X, y, self.scales, self.signal, self.noise, self.y_mean, self.y_std)

    def _y_std_units(self) -> np.ndarray:
        # Recover the standardised targets from alpha: y = (K + noise I) alpha.
        return self.chol @ (self.chol.T @ self.alpha)


def _build(X, y, scales, signal, noise, y_mean, y_std) -> GaussianProcess:
    z = (y - y_mean) / y_std
    K = matern52(X, X, scales, signal)
    K[np.diag_indices_from(K)] += noise + _JITTER
    L = linalg.cholesky(K, lower=True, check_finite=False)
    alpha = linalg.cho_solve((L, True), z, check_finite=False)
    return GaussianProcess(X, scales, signal, noise, y_mean, y_std, L, alpha)


def _neg_log_posterior(
    theta: np.ndarray, X: np.ndarray, z: np.ndarray, groups: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Negative log posterior of (log scales per group, log signal, log noise) and its gradient."""
    n = X.shape[0]
    groups = np.arange(X.shape[1]) if groups is None else groups
    dim = len(theta) - 2  # number of length scales (groups)
    log_scales, log_signal, log_noise = theta[:dim], theta[dim], theta[dim + 1]
    scales, signal, noise = np.exp(log_scales)[groups], math.exp(log_signal), math.exp(log_noise)
    r = np.sqrt(_sq_dists(X, X, 1.0 / scales))
    e = np.exp(-_SQRT5 * r)
    M = (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * e
    K = signal * M
    K[np.diag_indices_from(K)] += noise + _JITTER
    try:
        L = linalg.cholesky(K, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return 1e10, np.zeros_like(theta)
    alpha = linalg.cho_solve((L, True), z, check_finite=False)
    nll = 0.5 * z @ alpha + np.log(np.diag(L)).sum() + 0.5 * n * math.log(2 * math.pi)
    W = linalg.cho_solve((L, True), np.eye(n), check_finite=False) - np.outer(alpha, alpha)
    grad = np.empty_like(theta)
    # d K / d log(scale_d) = signal * 5/3 (1 + sqrt5 r) exp(-sqrt5 r) * (x_d - x'_d)^2 / scale_d^2
    A = W * (signal * (5.0 / 3.0) * (1.0 + _SQRT5 * r) * e)
    Xs = X / scales
    per_column = (Xs * Xs * A.sum(1)[:, None]).sum(0) - (Xs * (A @ Xs)).sum(0)
    grad[:dim] = np.bincount(groups, weights=per_column, minlength=dim)
    grad[dim] = 0.5 * (W * (signal * M)).sum()
    grad[dim + 1] = 0.5 * noise * np.trace(W)
    # Priors (negative log densities, up to constants).
    mu = _scale_prior_mean(dim)
    nll += 0.5 * (((log_scales - mu) / _LOG_SCALE_SD) ** 2).sum()
    grad[:dim] += (log_scales - mu) / _LOG_SCALE_SD**2
    m, s = _LOG_SIGNAL_PRIOR
    nll += 0.5 * ((log_signal - m) / s) ** 2
    grad[dim] += (log_signal - m) / s**2
    m, s = _LOG_NOISE_PRIOR
    nll += 0.5 * ((log_noise - m) / s) ** 2
    grad[dim + 1] += (log_noise - m) / s**2
    return float(nll), grad


def fit_gp(
    X: np.ndarray,
    y: np.ndarray,
    gen: np.random.Generator,
    restarts: int = 2,
    maxiter: int = 60,
    fit_rows: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> GaussianProcess:
    """Fit length scales, signal and noise by L-BFGS from a default start and ``restarts`` random ones.

    ``fit_rows`` picks the rows the hyperparameters are fitted on (a subset keeps large histories
    fast); the returned process is conditioned on every row. ``groups[c]`` is the length scale
    column ``c`` uses (default: one per column).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n = X.shape[0]
    groups = np.arange(X.shape[1]) if groups is None else np.asarray(groups, dtype=int)
    dim = int(groups.max()) + 1 if len(groups) else 0
    y_mean = float(y.mean())
    y_std = float(y.std()) or 1.0
    idx = np.arange(n) if fit_rows is None else fit_rows
    Xf, zf = X[idx], (y[idx] - y_mean) / y_std
    mu = _scale_prior_mean(dim)
    bounds = [_LOG_SCALE_BOUNDS] * dim + [_LOG_SIGNAL_BOUNDS, _LOG_NOISE_BOUNDS]
    starts = [np.concatenate([np.full(dim, mu), [0.0, math.log(1e-2)]])]
    for _ in range(restarts):
        starts.append(
            np.concatenate(
                [mu + gen.normal(0.0, 1.0, dim), [gen.normal(0.0, 0.5)], [math.log(1e-3) + gen.normal(0, 1)]]
            )
        )
    best_theta, best_value = starts[0], math.inf
    for theta0 in starts:
        theta0 = np.clip(theta0, [b[0] for b in bounds], [b[1] for b in bounds])
        res = optimize.minimize(
            _neg_log_posterior,
            theta0,
            args=(Xf, zf, groups),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": maxiter},
        )
        if np.isfinite(res.fun) and res.fun < best_value:
            best_theta, best_value = res.x, float(res.fun)
    scales = np.exp(best_theta[:dim])[groups]
    return _build(X, y, scales, math.exp(best_theta[dim]), math.exp(best_theta[dim + 1]), y_mean, y_std)
