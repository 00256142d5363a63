"""Grid and random search: the shared conformance suite, then what is special to each."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from strategy_conformance import StrategyConformance, drive, make_trial

from sweeper.spec import config_key, parse_sweep
from sweeper.strategies import SuggestionKind, available_methods, strategy_class
from sweeper.trials import TrialState

NESTED_GRID = {
    "method": "grid",
    "program": "train.py",
    "metric": {"name": "acc", "goal": "maximize"},
    "parameters": {
        "lr": {"values": [0.1, 0.01]},
        "layers": {"min": 1, "max": 3},
        "optimizer": {
            "parameters": {
                "name": {"values": ["adam", "sgd"]},
                "momentum": {"distribution": "q_uniform", "min": 0.5, "max": 1.0, "q": 0.25},
            }
        },
        "seed": {"value": 7},
    },
}
MIXED_RANDOM = {
    "method": "random",
    "program": "train.py",
    "metric": {"name": "loss"},
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "units": {"min": 16, "max": 256},
        "act": {"values": ["relu", "tanh"]},
        "opt": {"parameters": {"beta": {"distribution": "beta", "a": 2, "b": 5}}},
    },
}
FINITE_RANDOM = {
    "method": "random",
    "program": "train.py",
    "metric": {"name": "loss"},
    "parameters": {"a": {"values": [1, 2, 3]}, "b": {"min": 0, "max": 1}},
}


MIXED_BAYES = MIXED_RANDOM | {"method": "bayes", "metric": {"name": "acc", "goal": "maximize"}}
FINITE_BAYES = FINITE_RANDOM | {"method": "bayes"}
MIXED_TPE = MIXED_RANDOM | {"method": "tpe"}
FINITE_TPE = FINITE_RANDOM | {"method": "tpe"}
MODEL_BASED = [MIXED_BAYES, FINITE_BAYES, MIXED_TPE, FINITE_TPE]
MODEL_BASED_IDS = ["bayes", "bayes-finite", "tpe", "tpe-finite"]


HYPERBAND = {
    **MIXED_RANDOM,
    "method": "hyperband",
    "parameters": {**MIXED_RANDOM["parameters"], "epochs": {"value": 27}},
    "sweeper": {"resource": "epochs"},
}
BOHB = {**HYPERBAND, "method": "bohb"}
FINITE_BOHB = {
    **FINITE_RANDOM,
    "method": "bohb",
    "parameters": {**FINITE_RANDOM["parameters"], "epochs": {"value": 9}},
    "sweeper": {"resource": {"name": "epochs", "min": 1, "eta": 3}},
}
MULTI_FIDELITY = {"hyperband": HYPERBAND, "bohb": BOHB, "bohb-finite": FINITE_BOHB}
PBT = {**MIXED_RANDOM, "method": "pbt", "sweeper": {"pbt": {"population": 4, "perturbation_interval": 2}}}
FINITE_PBT = {**FINITE_RANDOM, "method": "pbt", "sweeper": {"pbt": {"population": 3}}}
POPULATION = {"pbt": PBT, "pbt-finite": FINITE_PBT}


@pytest.mark.parametrize(
    "raw",
    [NESTED_GRID, MIXED_RANDOM, FINITE_RANDOM, *MODEL_BASED, *MULTI_FIDELITY.values(), *POPULATION.values()],
    ids=["grid", "random", "random-finite", *MODEL_BASED_IDS, *MULTI_FIDELITY, *POPULATION],
)
class TestConformance(StrategyConformance):
    @pytest.fixture(autouse=True)
    def _spec(self, raw: dict) -> None:
        self.spec = parse_sweep(raw)


def test_registry_has_the_builtin_methods() -> None:
    assert {"grid", "random"} <= set(available_methods())
    with pytest.raises(KeyError, match="unknown method 'gird'"):
        strategy_class("gird")


def test_grid_covers_nested_parameters_exactly_once_then_is_done() -> None:
    spec = parse_sweep(NESTED_GRID)
    strategy = strategy_class("grid")(spec)
    trials = drive(strategy, spec, 1000)
    assert len(trials) == 2 * 3 * 2 * 3  # lr x layers x optimizer.name x momentum {0.5, 0.75, 1.0}
    assert len({config_key(t.config) for t in trials}) == len(trials)
    assert all(t.config["seed"] == 7 and set(t.config["optimizer"]) == {"name", "momentum"} for t in trials)
    done = strategy.suggest(trials, random.Random(0))
    assert done.kind is SuggestionKind.DONE and "36" in done.reason


def test_grid_skips_combinations_held_by_running_trials() -> None:
    spec = parse_sweep({"method": "grid", "program": "t.py", "parameters": {"x": {"values": [1, 2, 3]}}})
    strategy = strategy_class("grid")(spec)
    running = [make_trial({"x": 1}, TrialState.RUNNING, 1), make_trial({"x": 2}, TrialState.FAILED, 2)]
    assert strategy.suggest(running, random.Random(0)).config == {"x": 3}


def test_grid_rejects_continuous_parameters() -> None:
    problems = strategy_class("grid").check_spec(parse_sweep(MIXED_RANDOM | {"method": "random"}))
    assert any(path == "parameters.lr" for path, _ in problems)


def test_random_without_replacement_exhausts_a_finite_space_then_is_done() -> None:
    spec = parse_sweep(FINITE_RANDOM)  # 3 x 2 = 6 configurations
    strategy = strategy_class("random")(spec)
    trials = drive(strategy, spec, 100)
    assert len(trials) == 6
    assert len({config_key(t.config) for t in trials}) == 6
    assert strategy.suggest(trials, random.Random(0)).kind is SuggestionKind.DONE


def test_random_with_replacement_repeats_when_asked_to() -> None:
    spec = parse_sweep(FINITE_RANDOM | {"sweeper": {"sample_without_replacement": False}})
    trials = drive(strategy_class("random")(spec), spec, 30)
    assert len(trials) == 30
    assert max(Counter(config_key(t.config) for t in trials).values()) > 1


def test_random_depends_on_the_seed() -> None:
    spec = parse_sweep(MIXED_RANDOM)
    a = drive(strategy_class("random")(spec), spec, 5, seed=1)
    b = drive(strategy_class("random")(spec), spec, 5, seed=2)
    assert [t.config for t in a] != [t.config for t in b]
