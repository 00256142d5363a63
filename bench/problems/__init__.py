"""Benchmark problems: synthetic functions with known optima and a real scikit-learn tuning task.

Each problem is a W&B-format parameter dict (flat names) and an objective to minimise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.problems.base import Problem
from bench.problems.sklearn_tasks import svm_breast_cancer
from bench.problems.synthetic import SYNTHETIC


def all_problems(quick: bool = False) -> list[Problem]:
    problems = list(SYNTHETIC)
    if quick:
        return [p for p in problems if p.name in ("branin", "hartmann6", "mixed", "conditional")]
    return [*problems, svm_breast_cancer()]


def problems_from(path: Path) -> list[Problem]:
    """The problems a Python file defines as ``PROBLEMS`` (a list of :class:`Problem`): problems
    of your own, run beside the built-in ones with ``python -m bench.search --problems-from FILE``."""
    if not path.is_file():
        raise ValueError(f"--problems-from {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"bench_user_problems_{path.stem}", path)
    assert spec is not None and spec.loader is not None  # a .py file always has both
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a syntax error, a failed import, an error in the file's own code
        raise ValueError(f"--problems-from {path}: cannot load it: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, "PROBLEMS", None)
    if not isinstance(found, (list, tuple)) or not found:
        raise ValueError(f"--problems-from {path}: expected PROBLEMS = [Problem(...), ...] in the file")
    wrong = [type(p).__name__ for p in found if not isinstance(p, Problem)]
    if wrong:
        raise ValueError(
            f"--problems-from {path}: PROBLEMS holds {', '.join(wrong)}, expected bench.problems.Problem"
        )
    return list(found)


__all__ = ["Problem", "all_problems", "problems_from"]
