"""A Gaussian process with a Matern-5/2 ARD kernel, hyperparameters by maximum a posteriori.

Inputs live in the unit cube (see :mod:`sweeper.optim.encoding`); targets are standardised here.
Input columns may be tied into groups that share one length scale: the one-hot columns of a
categorical parameter form one group, so the kernel sees how many categories differ (a Hamming
distance) rather than which, and a category seen in a few lucky trials cannot claim a short scale
of its own.
The log marginal likelihood and its gradient are written out, so L-BFGS needs no finite
differences; priors on length scales, signal and noise keep the fit away from degenerate ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
_LOG_NOISE_BOUNDS = (math.log(1e-6), math.log(0.5))
# Length scales stop at 2 (inputs span 1): a longer scale all but drops its input from the model,
# and on a function that is flat over most of its cube (Hartmann-6) the fit would otherwise rule
# out, after a few trials, an input whose value decides which basin is the global one.
_LOG_SCALE_BOUNDS = (math.log(0.01), math.log(2.0))
_LOG_SIGNAL_BOUNDS = (math.log(0.05), math.log(20.0))
_SCALE_PRIOR_WEIGHT = 0.1
_NOISE_PRIOR_RATE = 30.0


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

    def predict_with_grad(self, Xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Posterior mean and variance at ``Xs`` and their gradients with respect to ``Xs``.

        What a gradient-based acquisition optimiser needs: d mean / dx = sum_i alpha_i dk_i/dx and
        d var / dx = -2 sum_i (K^-1 k)_i dk_i/dx, with dk/dx from the kernel's derivative in r^2.
        """
        Xs = np.atleast_2d(Xs)
        inv_sq = 1.0 / self.scales**2
        r = np.sqrt(_sq_dists(Xs, self.X, 1.0 / self.scales))
        e = np.exp(-_SQRT5 * r)
        Ks = self.signal * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * e
        dk_dr2 = -(5.0 / 6.0) * self.signal * (1.0 + _SQRT5 * r) * e
        mean = Ks @ self.alpha
        Kinv_k = linalg.cho_solve((self.chol, True), Ks.T, check_finite=False).T
        var = self.signal - (Ks * Kinv_k).sum(1)

        def grad_of(weights: np.ndarray) -> np.ndarray:
            # sum_i w_i dk_i/dx with dr2_i/dx = 2 (x - x_i) / scale^2
            w = dk_dr2 * weights
            return 2.0 * inv_sq * (Xs * w.sum(1)[:, None] - w @ self.X)

        d_mean = grad_of(self.alpha[None, :])
        d_var = -2.0 * grad_of(Kinv_k)
        d_var[var <= 1e-12] = 0.0
        var = np.maximum(var, 1e-12)
        s = self.y_std
        return self.y_mean + s * mean, var * s * s, s * d_mean, s * s * d_var

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
    # Priors (negative log densities, up to constants), in the log parameters L-BFGS moves.
    # Length scales: 0.1 (l^2 + 1/l^2) is flat between about 0.3 and 3 (the unit cube's own
    # scale) and steep outside, so a few lucky points cannot shrink a scale to a spike.
    inv_sq = np.exp(-2.0 * log_scales)
    nll += _SCALE_PRIOR_WEIGHT * (inv_sq + 1.0 / inv_sq).sum()
    grad[:dim] += _SCALE_PRIOR_WEIGHT * 2.0 * (1.0 / inv_sq - inv_sq)
    # Signal variance: Gamma(2, 1), mode 1 (targets are standardised).
    nll += signal - log_signal
    grad[dim] += signal - 1.0
    # Noise variance: Gamma(1.1, 30), mode near 0.003: mostly deterministic objectives, but
    # noise is allowed where the data ask for it.
    nll += _NOISE_PRIOR_RATE * noise - 0.1 * log_noise
    grad[dim + 1] += _NOISE_PRIOR_RATE * noise - 0.1
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
    bounds = [_LOG_SCALE_BOUNDS] * dim + [_LOG_SIGNAL_BOUNDS, _LOG_NOISE_BOUNDS]
    # The priors' modes (length scale 1, signal 1, small noise), then random starts around them.
    starts = [np.concatenate([np.zeros(dim), [0.0, math.log(1e-2)]])]
    for _ in range(restarts):
        starts.append(
            np.concatenate(
                [gen.normal(0.0, 1.0, dim), [gen.normal(0.0, 0.5)], [math.log(1e-3) + gen.normal(0, 1)]]
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
