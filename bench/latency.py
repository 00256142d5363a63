"""Time of one suggestion with ``n`` finished trials in the history, for each tool, same problem."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from bench.adapters import optuna_distributions, optuna_sampler, sweeper_history, wandb_next
from bench.problems import Problem
from bench.problems.synthetic import SYNTHETIC

LATENCY_METHODS = ("sweeper bayes", "sweeper tpe", "optuna GP", "optuna TPE", "wandb bayes")
_WANDB_MAX = 200  # W&B's engine refits an sklearn GP with restarts: at 1000 trials it takes minutes


def _history(problem: Problem, n: int) -> tuple[list, list[float]]:
    from sweeper.spec import parse_sweep
    from sweeper.strategies import strategy_class

    rand = strategy_class("random")(parse_sweep(problem.sweep("random")))
    configs = [rand.suggest([], random.Random(f"latency:{i}")).config for i in range(n)]
    return configs, [problem.objective(c) for c in configs]


def _timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _suggester(method: str, problem: Problem, configs: list, values: list) -> Callable[[], object]:
    if method.startswith("sweeper"):
        from sweeper.spec import parse_sweep
        from sweeper.strategies import strategy_class

        name = method.split()[1]
        strategy = strategy_class(name)(parse_sweep(problem.sweep(name)))
        trials = sweeper_history(problem, configs, values)
        counter = iter(range(10**6))
        return lambda: strategy.suggest(trials, random.Random(next(counter)))
    if method.startswith("optuna"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = optuna_distributions(problem)
        study = optuna.create_study(sampler=optuna_sampler(method.split()[1].lower(), 0))
        study.add_trials(
            [
                optuna.trial.create_trial(params=c, distributions=dists, value=v)
                for c, v in zip(configs, values, strict=True)
            ]
        )

        def ask() -> None:
            trial = study.ask(dists)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # keep the history at n

        return ask
    return lambda: wandb_next(problem, "bayes", configs, values, 0)


def measure_latency(
    methods: list[str], sizes: tuple[int, ...], repeats: int = 3
) -> dict[str, dict[str, float]]:
    problem = next(p for p in SYNTHETIC if p.name == "mixed")  # mixed: continuous, int, log, categorical
    out: dict[str, dict[str, float]] = {m: {} for m in methods}
    for n in sizes:
        configs, values = _history(problem, n)
        for method in methods:
            if method == "wandb bayes" and n > _WANDB_MAX:
                continue
            out[method][str(n)] = _timed(_suggester(method, problem, configs, values), repeats)
    return out
