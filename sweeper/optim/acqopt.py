"""Gradient ascent of log EI over the numeric coordinates of many starting rows at once.

Every start's coordinates are stacked into one vector for one L-BFGS-B run: the starts do not
interact, so the sum of their scores has each start's gradient in its own block. Coordinates are
divided by their length scales first (so a step moves every coordinate about as far in the
kernel's eyes), which keeps the problem well conditioned when one scale is 100 times another.
Categorical columns stay as they are; lattice parameters move freely and are snapped afterwards.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from sweeper.optim.acquisition import log_expected_improvement_grad
from sweeper.optim.encoding import SpaceCodec
from sweeper.optim.gp import GaussianProcess

MAX_ITER = 200


def numeric_params(codec: SpaceCodec) -> tuple[np.ndarray, np.ndarray]:
    """The row positions of the numeric parameters and their columns in the one-hot form."""
    params = np.array([j for j, c in enumerate(codec.codecs) if not c.is_categorical], dtype=int)
    return params, codec.offsets[params] if len(params) else params


def ascend(gp: GaussianProcess, best: float, rows: np.ndarray, codec: SpaceCodec) -> np.ndarray:
    """``rows`` moved uphill in log EI over their numeric coordinates (categories unchanged)."""
    params, cols = numeric_params(codec)
    if len(params) == 0 or len(rows) == 0:
        return rows
    scales = gp.scales[cols]
    base_hot = codec.one_hot(rows)
    n = len(rows)

    def negative(flat: np.ndarray) -> tuple[float, np.ndarray]:
        hot = base_hot.copy()
        hot[:, cols] = flat.reshape(n, len(cols)) * scales
        mean, var, d_mean, d_var = gp.predict_with_grad(hot)
        value, grad = log_expected_improvement_grad(mean, var, d_mean, d_var, best)
        return -float(value.sum()), -(grad[:, cols] * scales).ravel()

    x0 = (rows[:, params] / scales).ravel()
    bounds = np.tile(np.stack([np.zeros(len(cols)), 1.0 / scales], 1), (n, 1))
    res = optimize.minimize(
        negative, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": MAX_ITER}
    )
    out = rows.copy()
    out[:, params] = np.clip(res.x.reshape(n, len(cols)) * scales, 0.0, 1.0)
    return out
