"""Standard test functions (definitions from the optimisation literature, e.g. the Virtual Library
of Simulation Experiments by Surjanovic and Bingham) plus a mixed-type and a conditional variant."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bench.problems.base import Problem


def _vec(config: Mapping[str, Any], d: int) -> np.ndarray:
    return np.array([config[f"x{i}"] for i in range(d)], dtype=float)


def _box(d: int, lo: float, hi: float) -> dict[str, dict[str, float]]:
    return {f"x{i}": {"distribution": "uniform", "min": lo, "max": hi} for i in range(d)}


def branin(c: Mapping[str, Any]) -> float:
    x, y = c["x0"], c["x1"]
    b, cc, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x * x + cc * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


_H_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(c: Mapping[str, Any]) -> float:
    x = _vec(c, 6)
    return float(-(_H_ALPHA * np.exp(-(_H_A * (x - _H_P) ** 2).sum(1))).sum())


def rosenbrock(c: Mapping[str, Any]) -> float:
    x = _vec(c, 4)
    return float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())


# Ackley and Rastrigin are shifted so their optimum is not the centre of the box.
_ACKLEY_SHIFT = np.array([7.3, -4.1, 12.2, -9.5, 2.7])
_RASTRIGIN_SHIFT = np.array([1.3, -2.2, 0.7, -3.1])


def ackley(c: Mapping[str, Any]) -> float:
    x = _vec(c, 5) - _ACKLEY_SHIFT
    d = len(x)
    return float(
        -20 * math.exp(-0.2 * math.sqrt((x * x).sum() / d))
        - math.exp(np.cos(2 * math.pi * x).sum() / d)
        + 20
        + math.e
    )


def _levy(x: np.ndarray) -> float:
    w = 1 + (x - 1) / 4
    head = math.sin(math.pi * w[0]) ** 2
    mid = ((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2)).sum()
    tail = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    return float(head + mid + tail)


def levy(c: Mapping[str, Any]) -> float:
    return _levy(_vec(c, 5))


def rastrigin(c: Mapping[str, Any]) -> float:
    x = _vec(c, 4) - _RASTRIGIN_SHIFT
    return float(10 * len(x) + (x * x - 10 * np.cos(2 * math.pi * x)).sum())


# Mixed: Levy in 3 continuous dims, an integer dim, a log-scaled dim and an unordered categorical.
_MIXED_OFFSET = {"sgd": 1.5, "adam": 0.0, "rmsprop": 0.8, "adagrad": 2.5}


def mixed(c: Mapping[str, Any]) -> float:
    x = np.array([c["x0"], c["x1"], c["x2"]])
    return (
        _levy(x)
        + 0.05 * (c["layers"] - 6) ** 2
        + (math.log10(c["lr"]) + 2.5) ** 2 * 0.3
        + _MIXED_OFFSET[c["optimizer"]]
    )


# Conditional: the branch picks which parameters matter; the others are ignored.
def conditional(c: Mapping[str, Any]) -> float:
    if c["model"] == "linear":
        return 0.5 + (math.log10(c["alpha"]) + 3) ** 2 * 0.2
    if c["model"] == "tree":
        return 0.05 * (c["depth"] - 7) ** 2 + (c["subsample"] - 0.7) ** 2 + 0.1
    return hartmann6({f"x{i}": c[f"h{i}"] for i in range(6)}) + 3.32237  # the best branch, optimum 0


SYNTHETIC = (
    Problem("branin", {"x0": {"min": -5.0, "max": 10.0}, "x1": {"min": 0.0, "max": 15.0}}, branin, 0.397887),
    Problem("hartmann6", _box(6, 0.0, 1.0), hartmann6, -3.32237),
    Problem("rosenbrock", _box(4, -5.0, 10.0), rosenbrock, 0.0),
    Problem("ackley", _box(5, -32.768, 32.768), ackley, 0.0),
    Problem("levy", _box(5, -10.0, 10.0), levy, 0.0),
    Problem("rastrigin", _box(4, -5.12, 5.12), rastrigin, 0.0),
    Problem(
        "mixed",
        {
            **_box(3, -10.0, 10.0),
            "layers": {"distribution": "int_uniform", "min": 1, "max": 12},
            "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
            "optimizer": {"values": ["sgd", "adam", "rmsprop", "adagrad"]},
        },
        mixed,
        0.0,
    ),
    Problem(
        "conditional",
        {
            "model": {"values": ["linear", "tree", "kernel"]},
            "alpha": {"distribution": "log_uniform_values", "min": 1e-6, "max": 1.0},
            "depth": {"distribution": "int_uniform", "min": 1, "max": 12},
            "subsample": {"distribution": "uniform", "min": 0.1, "max": 1.0},
            **{f"h{i}": {"distribution": "uniform", "min": 0.0, "max": 1.0} for i in range(6)},
        },
        conditional,
        0.0,
    ),
)
