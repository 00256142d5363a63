"""The bundled scikit-learn data sets the examples train on (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def digits(shape: str = "flat", seed: int = 0) -> Split:
    """The 8x8 handwritten digits, pixels scaled to [0, 1], split 75/25 with every class in both parts.

    ``shape`` is ``"flat"`` (64 features, for an MLP), ``"image"`` (1x8x8, for a CNN) or
    ``"rows"`` (a sequence of 8 rows of 8 pixels, for an RNN or a Transformer).
    Returns ``x_train, x_val, y_train, y_val``; the split is the same for every trial of a sweep.
    """
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    shapes = {"flat": (-1, 64), "image": (-1, 1, 8, 8), "rows": (-1, 8, 8)}
    if shape not in shapes:
        raise ValueError(f"shape must be one of {sorted(shapes)}, not {shape!r}")
    x = x.reshape(shapes[shape])
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, x_val, y_train.astype(np.int64), y_val.astype(np.int64)
