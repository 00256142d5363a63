"""Benchmark problems: synthetic functions with known optima and a real scikit-learn tuning task.

Each problem is a W&B-format parameter dict (flat names) and an objective to minimise.
"""

from __future__ import annotations

from bench.problems.base import Problem
from bench.problems.sklearn_tasks import svm_breast_cancer
from bench.problems.synthetic import SYNTHETIC


def all_problems(quick: bool = False) -> list[Problem]:
    problems = list(SYNTHETIC)
    if quick:
        return [p for p in problems if p.name in ("branin", "hartmann6", "mixed", "conditional")]
    return [*problems, svm_breast_cancer()]


__all__ = ["Problem", "all_problems"]
