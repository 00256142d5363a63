"""Real tuning: an SVM on scikit-learn's breast-cancer data, 3-fold cross-validated error.

Log-scaled values are rounded to 1/20 of a decade before training, so configurations that
differ only below that are one cached result and the benchmark stays fast.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from bench.problems.base import Problem


@functools.cache
def _cv_error(log_c: float, log_gamma: float, kernel: str) -> float:
    import warnings

    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = _data()
    model = make_pipeline(StandardScaler(), SVC(C=10**log_c, gamma=10**log_gamma, kernel=kernel))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return 1.0 - float(cross_val_score(model, X, y, cv=3).mean())


@functools.lru_cache(maxsize=1)
def _data():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def _svm(c: Mapping[str, Any]) -> float:
    snap = lambda v: round(math.log10(v) * 20) / 20  # noqa: E731
    return _cv_error(snap(c["C"]), snap(c["gamma"]), c["kernel"])


def svm_breast_cancer() -> Problem:
    return Problem(
        "svm_cancer",
        {
            "C": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e3},
            "gamma": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e1},
            "kernel": {"values": ["rbf", "sigmoid", "poly"]},
        },
        _svm,
        None,
    )
