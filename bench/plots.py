"""Best-so-far curves: median log10 regret against trials, one panel per problem (PNG, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.problems import Problem


def best_so_far(problems: list[Problem], losses: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, problem in zip(axes.ravel(), problems, strict=False):
        runs = losses[problem.name]
        reference = problem.optimum
        if reference is None:
            reference = min(min(r) for per in runs.values() for r in per)
        floor = 1e-8 if problem.optimum is not None else 1e-3
        for method, per_seed in runs.items():
            width = max(len(run) for run in per_seed)  # a run whose space ran out ends early
            padded = np.array([run + [math.inf] * (width - len(run)) for run in per_seed])
            curves = np.log10(np.maximum(np.minimum.accumulate(padded, axis=1) - reference, floor))
            x = np.arange(1, curves.shape[1] + 1)
            style = "-" if method.startswith("sweeper") else "--"
            ax.plot(x, np.median(curves, axis=0), style, label=method)
        ax.set_title(problem.name)
        ax.set_xlabel("trials")
        ax.set_ylabel("log10 regret (median)")
    for ax in axes.ravel()[len(problems) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
