"""One function per search tool: run ``budget`` trials of a problem and return the losses in order
(fewer where a sweeper method's finite space runs out first: the best so far then stands).

sweeper's strategies are driven through the strategy interface (no store), Optuna through
ask-and-tell, W&B's engine through ``sweeps.next_run`` with runs rebuilt from the history.
"""

from __future__ import annotations

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
def optuna_distributions(problem: Problem) -> dict[str, Any]:
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for name, p in problem.parameters.items():
        kind = p.get("distribution")
        if "values" in p:
            out[name] = od.CategoricalDistribution(p["values"])
        elif kind == "int_uniform":
            out[name] = od.IntDistribution(p["min"], p["max"])
        elif kind == "log_uniform_values":
            out[name] = od.FloatDistribution(p["min"], p["max"], log=True)
        elif kind in (None, "uniform"):
            out[name] = od.FloatDistribution(p["min"], p["max"])
        else:
            raise ValueError(f"{problem.name}.{name}: no Optuna mapping for {kind}")
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

    import sweeps

    # The engine draws from numpy's and Python's global generators (bayes and random search);
    # seed both per call so runs are reproducible.
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
