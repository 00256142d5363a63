"""Expected improvement, in log form so it stays informative far from the incumbent.

For a minimised target with posterior N(mean, sd^2) and incumbent ``best``:
EI = sd * h(z), z = (best - mean) / sd, h(z) = phi(z) + z Phi(z). ``log h`` is computed with the
scaled complementary error function where h underflows (z << 0), as in "Unexpected improvements to
expected improvement" (Ament et al., 2023).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_HALF_PI = math.sqrt(math.pi / 2)


def log_h(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    direct = z > -1.0
    zd = z[direct]
    out[direct] = np.log(np.exp(-0.5 * zd * zd) / math.sqrt(2 * math.pi) + zd * special.ndtr(zd))
    zt = np.maximum(z[~direct], -1e6)
    # h(z) = phi(z) * (1 + z * sqrt(pi/2) * erfcx(-z / sqrt2)); the bracket is small and positive.
    inner = 1.0 + zt * _SQRT_HALF_PI * special.erfcx(-zt / math.sqrt(2))
    out[~direct] = -0.5 * zt * zt - _LOG_SQRT_2PI + np.log(np.maximum(inner, 1e-300))
    return out


def log_expected_improvement(mean: np.ndarray, var: np.ndarray, best: float) -> np.ndarray:
    sd = np.sqrt(np.maximum(var, 1e-18))
    return np.log(sd) + log_h((best - mean) / sd)


def log_expected_improvement_grad(
    mean: np.ndarray, var: np.ndarray, d_mean: np.ndarray, d_var: np.ndarray, best: float
) -> tuple[np.ndarray, np.ndarray]:
    """log EI and its gradient, from the posterior's and its gradients (rows of ``d_mean``, ``d_var``).

    d log h / dz = Phi(z) / h(z), taken in logs so it stays finite where both underflow.
    """
    var = np.maximum(var, 1e-18)
    sd = np.sqrt(var)
    z = (best - mean) / sd
    lh = log_h(z)
    dlh = np.exp(special.log_ndtr(z) - lh)
    by_mean = -dlh / sd
    by_var = (1.0 - z * dlh) / (2.0 * var)
    grad = by_mean[:, None] * d_mean + by_var[:, None] * d_var
    return np.log(sd) + lh, grad
