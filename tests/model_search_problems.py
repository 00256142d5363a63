"""Small synthetic problems shared by the bayes and tpe tests (not the benchmark's)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from strategy_conformance import make_trial

from sweeper.spec import SweepSpec, parse_sweep
from sweeper.strategies import SuggestionKind, strategy_class
from sweeper.trials import Trial, TrialState

SHIFT = (0.37, -1.21, 2.05, -0.66)


def sphere_spec(method: str) -> SweepSpec:
    """A 4-D sphere shifted off-centre, plus a categorical where only "c" is good."""
    return parse_sweep(
        {
            "method": method,
            "metric": {"name": "loss"},
            "parameters": {
                "x": {"parameters": {f"x{i}": {"min": -4.0, "max": 4.0} for i in range(4)}},
                "kind": {"values": ["a", "b", "c", "d", "e"]},
            },
        }
    )


def sphere(config: Mapping[str, Any]) -> float:
    penalty = 0.0 if config["kind"] == "c" else 3.0
    return sum((config["x"][f"x{i}"] - s) ** 2 for i, s in enumerate(SHIFT)) + penalty


def run(
    method: str,
    objective: Callable[[Mapping[str, Any]], float],
    spec: SweepSpec,
    budget: int,
    seed: int,
    metric: str = "loss",
) -> list[Trial]:
    strategy = strategy_class(method)(spec)
    trials: list[Trial] = []
    for n in range(budget):
        suggestion = strategy.suggest(trials, random.Random(f"{seed}:{n}"))
        assert suggestion.kind is SuggestionKind.RUN
        value = objective(suggestion.config)
        trials.append(make_trial(suggestion.config, TrialState.FINISHED, n + 1, **{metric: value}))
    return trials


def after_a_long_random_history(method: str, size: int, suggestions: int = 20) -> tuple[list[float], float]:
    """The losses of what ``method`` suggests after ``size`` random trials of the sphere, and the
    loss a random draw beats only 1 time in 50: a model that still steers often lands below it."""
    history = run("random", sphere, sphere_spec("random"), size, seed=3)
    losses = sorted(t.summary["loss"] for t in history)
    strategy = strategy_class(method)(sphere_spec(method))
    suggested = [sphere(strategy.suggest(history, random.Random(k)).config) for k in range(suggestions)]
    return suggested, losses[len(losses) // 50]
