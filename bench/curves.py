"""Learning-curve problems for the multi-fidelity benchmark.

Each problem has a W&B-format search space, a curve (validation loss per epoch, 1..max_epochs)
for any configuration, the noiseless final loss that regret is measured on, and the best final
loss the space allows. Two are synthetic with realistic shapes (power law, exponential
saturation; fast starters can plateau high, so early values mislead); one replays real
scikit-learn ``partial_fit`` curves on the bundled digits data, computed once and cached.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeper.files import write_atomic

CACHE = Path(__file__).parent / "results" / "multifidelity_sgd_curves.json"


@dataclass(frozen=True)
class CurveProblem:
    name: str
    parameters: Mapping[str, Any]  # W&B format, without the resource parameter
    max_epochs: int
    curve: Callable[[Mapping[str, Any], random.Random], list[float]]  # observed, per epoch
    final: Callable[[Mapping[str, Any]], float]  # noiseless loss after max_epochs
    best: float  # the smallest final loss in the space
    epoch_cost: Callable[[Mapping[str, Any]], float]  # simulated seconds per epoch


SYNTHETIC_SPACE = {
    "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1.0},
    "momentum": {"distribution": "uniform", "min": 0.0, "max": 0.99},
    "width": {"distribution": "int_uniform", "min": 8, "max": 256},
    "act": {"values": ["relu", "tanh", "sigmoid"]},
}
_ACT = {"relu": 0.0, "tanh": 0.03, "sigmoid": 0.1}


def _asymptote(c: Mapping[str, Any]) -> float:
    lr = math.log10(c["lr"]) + 2.5
    width = math.log2(c["width"]) - 7.0
    return 0.05 + 0.08 * lr**2 + 0.3 * (c["momentum"] - 0.9) ** 2 + 0.01 * width**2 + _ACT[c["act"]]


def _speed(c: Mapping[str, Any]) -> float:
    """0..1: large learning rates and momentum learn fast, whatever their plateau."""
    z = math.log10(c["lr"]) + 2.0 + 2.0 * c["momentum"] - 1.0
    return 1.0 / (1.0 + math.exp(-1.5 * z))


def _power_law(c: Mapping[str, Any], t: float) -> float:
    return _asymptote(c) + 1.0 * t ** -(0.25 + 0.75 * _speed(c))


def _exp_saturation(c: Mapping[str, Any], t: float) -> float:
    a = _asymptote(c)
    return a + (1.2 - a) * math.exp(-(0.03 + 0.5 * _speed(c)) * t)


def _synthetic(name: str, shape: Callable[[Mapping[str, Any], float], float], epochs: int) -> CurveProblem:
    def curve(c: Mapping[str, Any], rng: random.Random) -> list[float]:
        return [shape(c, t) + rng.gauss(0.0, 0.01) for t in range(1, epochs + 1)]

    def final(c: Mapping[str, Any]) -> float:
        return shape(c, epochs)

    return CurveProblem(
        name=name,
        parameters=SYNTHETIC_SPACE,
        max_epochs=epochs,
        curve=curve,
        final=final,
        best=_best_synthetic(final),
        epoch_cost=lambda c: 0.5 + c["width"] / 256,
    )


def _best_synthetic(final: Callable[[Mapping[str, Any]], float]) -> float:
    """The best final loss, by a dense random scan refined around the best points found."""
    rng = random.Random(0)

    def draw(center: Mapping[str, Any] | None, scale: float) -> dict[str, Any]:
        if center is None:
            return {
                "lr": 10 ** rng.uniform(-5, 0),
                "momentum": rng.uniform(0, 0.99),
                "width": rng.randint(8, 256),
                "act": rng.choice(list(_ACT)),
            }
        return {
            "lr": min(1.0, max(1e-5, center["lr"] * 10 ** rng.gauss(0, scale))),
            "momentum": min(0.99, max(0.0, center["momentum"] + rng.gauss(0, scale / 5))),
            "width": min(256, max(8, round(center["width"] * 2 ** rng.gauss(0, scale)))),
            "act": center["act"],
        }

    pool = [draw(None, 0) for _ in range(5000)]
    best = min(pool, key=final)
    for scale in (0.5, 0.2, 0.05, 0.01):
        best = min([best, *(draw(best, scale) for _ in range(1000))], key=final)
    return final(best)


# --- real curves: SGDClassifier.partial_fit on scikit-learn's bundled digits ---

SGD_SPACE = {
    "alpha": {"values": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]},
    "eta0": {"values": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    "learning_rate": {"values": ["constant", "invscaling", "adaptive"]},
    "loss": {"values": ["hinge", "log_loss", "modified_huber"]},
}
SGD_EPOCHS = 27


def _sgd_key(c: Mapping[str, Any]) -> str:
    return f"{c['alpha']:g}|{c['eta0']:g}|{c['learning_rate']}|{c['loss']}"


def sgd_curves() -> dict[str, list[float]]:
    """Validation error per epoch of every configuration, computed once and cached to disk."""
    if CACHE.exists():
        return json.loads(CACHE.read_text())
    import itertools
    import warnings

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    classes = np.unique(y)
    curves = {}
    names = list(SGD_SPACE)
    for combo in itertools.product(*(SGD_SPACE[n]["values"] for n in names)):
        c = dict(zip(names, combo, strict=True))
        model = SGDClassifier(
            alpha=c["alpha"], eta0=c["eta0"], learning_rate=c["learning_rate"], loss=c["loss"], random_state=0
        )
        order = np.random.default_rng(0)
        errors = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(SGD_EPOCHS):
                idx = order.permutation(len(x_train))
                model.partial_fit(x_train[idx], y_train[idx], classes=classes)
                errors.append(float(1.0 - model.score(x_val, y_val)))
        curves[_sgd_key(c)] = errors
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(CACHE, json.dumps(curves))
    return curves


def sgd_problem() -> CurveProblem:
    curves = sgd_curves()
    return CurveProblem(
        name="sgd-digits (real)",
        parameters=SGD_SPACE,
        max_epochs=SGD_EPOCHS,
        curve=lambda c, rng: list(curves[_sgd_key(c)]),
        final=lambda c: curves[_sgd_key(c)][-1],
        best=min(v[-1] for v in curves.values()),
        epoch_cost=lambda c: 1.0,
    )


def problems() -> list[CurveProblem]:
    return [
        _synthetic("power-law", _power_law, 27),
        _synthetic("exp-saturation", _exp_saturation, 27),
        sgd_problem(),
    ]
