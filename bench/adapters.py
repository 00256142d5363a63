"""One function per search tool: run ``budget`` trials of a problem and return the losses in order
(fewer where a sweeper method's finite space runs out first: the best so far then stands).

sweeper's strategies are driven through the strategy interface (no store), Optuna through
ask-and-tell, W&B's engine through ``sweeps.next_run`` with runs rebuilt from the history.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from bench.problems import Problem

Runner = Callable[[Problem, int, int], list[float]]


# -- sweeper ------------------------------------------------------------------------------------------
def sweeper_history(problem: Problem, configs: list[Mapping[str, Any]], values: list[float]) -> list[Any]:
    from sweeper.trials import Trial, TrialState

    return [
        Trial(i + 1, "bench", i + 1, c, TrialState.FINISHED, 0.0, summary={"loss": v})
        for i, (c, v) in enumerate(zip(configs, values, strict=True))
    ]


def sweeper_runner(method: str) -> Runner:
    def run(problem: Problem, budget: int, seed: int) -> list[float]:
        from sweeper.spec import parse_sweep
        from sweeper.strategies import SuggestionKind, strategy_class

        spec = parse_sweep(problem.sweep(method))
        strategy = strategy_class(method)(spec)
        configs: list[Mapping[str, Any]] = []
        values: list[float] = []
        for n in range(budget):
            trials = sweeper_history(problem, configs, values)
            suggestion = strategy.suggest(trials, random.Random(f"{seed}:{n}"))
            if suggestion.kind is SuggestionKind.DONE:  # a finite space smaller than the budget has run
                break
            if suggestion.config is None:  # nothing runs in parallel here: a wait would never end
                raise RuntimeError(f"{method} on {problem.name}: {suggestion.kind} with every trial finished")
            configs.append(suggestion.config)
            values.append(problem.objective(suggestion.config))
        return values

    return run


# -- Optuna -------------------------------------------------------------------------------------------
def wandb_distribution(name: str, p: Mapping[str, Any]) -> str:
    """A parameter's W&B distribution: its ``distribution``, or what W&B infers without one (values:
    categorical, value: constant, int min and max: int_uniform, other numbers: uniform)."""
    if "distribution" in p:
        return str(p["distribution"])
    if "values" in p:
        return "categorical_w_probabilities" if "probabilities" in p else "categorical"
    if "value" in p:
        return "constant"
    if "min" not in p or "max" not in p:
        raise ValueError(f"{name}: cannot infer its distribution from the keys {', '.join(map(str, p))}")
    # bool is an int in Python, not in W&B's schema.
    ints = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
    return "int_uniform" if ints else "uniform"


def _on_grid(x: float, q: float) -> bool:
    k = x / q
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


def optuna_distribution(name: str, p: Mapping[str, Any]) -> Any:
    """The Optuna distribution that draws what W&B's does; ValueError for one Optuna has not."""
    import optuna.distributions as od

    kind = wandb_distribution(name, p)
    try:
        if kind == "constant":
            return od.CategoricalDistribution([p["value"]])
        if kind == "categorical":
            return od.CategoricalDistribution(p["values"])
        if kind == "int_uniform":
            return od.IntDistribution(p["min"], p["max"])
        if kind == "uniform":
            return od.FloatDistribution(p["min"], p["max"])
        # The inverse log-uniform of W&B is log-uniform too (1/x is when x is); the v1 forms give
        # their bounds as base-e exponents.
        if kind in ("log_uniform_values", "inv_log_uniform_values"):
            return od.FloatDistribution(p["min"], p["max"], log=True)
        if kind == "log_uniform":
            return od.FloatDistribution(math.exp(p["min"]), math.exp(p["max"]), log=True)
        if kind == "inv_log_uniform":
            return od.FloatDistribution(math.exp(-p["max"]), math.exp(-p["min"]), log=True)
        if kind == "q_uniform":
            # W&B rounds a uniform draw to a multiple of q (ints for an int q); Optuna's step counts
            # from min, so the two draw from the same values only where min and max are multiples of
            # q (W&B's rounding gives the two end values half the chance of the others).
            q = p.get("q", 1.0)
            if _on_grid(p["min"], q) and _on_grid(p["max"], q):
                if isinstance(q, int) and all(isinstance(p[k], int) for k in ("min", "max")):
                    return od.IntDistribution(p["min"], p["max"], step=q)
                return od.FloatDistribution(float(p["min"]), float(p["max"]), step=float(q))
            raise ValueError(f"min and max are not multiples of q={q}, where W&B's values lie")
    except KeyError as exc:
        raise ValueError(f"{name}: {kind} without {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ValueError(f"{name}: no Optuna distribution for {dict(p)}: {exc}") from None
    raise ValueError(f"{name}: no Optuna distribution draws like W&B's {kind}")


def optuna_distributions(problem: Problem) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, p in problem.parameters.items():
        try:
            out[name] = optuna_distribution(name, p)
        except ValueError as exc:
            raise ValueError(f"problem {problem.name}, parameter {exc}") from None
    return out


def optuna_sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def optuna_runner(kind: str) -> Runner:
    def run(problem: Problem, budget: int, seed: int) -> list[float]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna_sampler(kind, seed))
        dists = optuna_distributions(problem)
        values = []
        for _ in range(budget):
            trial = study.ask(dists)
            value = problem.objective(trial.params)
            study.tell(trial, value)
            values.append(value)
        return values

    return run


# -- W&B sweeps ---------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars from the engine


def wandb_runs(configs: list[Mapping[str, Any]], values: list[float]) -> list[Any]:
    from sweeps import RunState, SweepRun

    return [
        SweepRun(
            name=str(i),
            state=RunState.finished,
            config={k: {"value": v} for k, v in c.items()},
            summary_metrics={"loss": y},
        )
        for i, (c, y) in enumerate(zip(configs, values, strict=True))
    ]


def wandb_next(problem: Problem, method: str, configs: list, values: list, seed: int) -> dict[str, Any]:
    import numpy as np
    import sweeps.bayes_search
    import sweeps.grid_search
    import sweeps.random_search

    # The engine draws from numpy's and Python's global generators (bayes and random search);
    # seed both per call so runs are reproducible. Its search modules are imported above, not by
    # next_run on its first call: their imports draw from Python's generator after the seeding.
    call_seed = (seed * 100_003 + len(configs)) % 2**32
    np.random.seed(call_seed)
    random.seed(call_seed)
    run = sweeps.next_run(problem.sweep(method), wandb_runs(configs, values))
    return {k: _plain(v["value"]) for k, v in run.config.items()}


def wandb_runner(method: str) -> Runner:
    def run(problem: Problem, budget: int, seed: int) -> list[float]:
        import warnings

        configs: list[dict[str, Any]] = []
        values: list[float] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn convergence warnings from the engine's GP
            for _ in range(budget):
                config = wandb_next(problem, method, configs, values, seed)
                configs.append(config)
                values.append(problem.objective(config))
        return values

    return run


METHODS: dict[str, Runner] = {
    "sweeper bayes": sweeper_runner("bayes"),
    "sweeper tpe": sweeper_runner("tpe"),
    "sweeper random": sweeper_runner("random"),
    "optuna GP": optuna_runner("gp"),
    "optuna TPE": optuna_runner("tpe"),
    "optuna random": optuna_runner("random"),
    "wandb bayes": wandb_runner("bayes"),
    "wandb random": wandb_runner("random"),
}
