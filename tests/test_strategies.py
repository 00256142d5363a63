"""Grid and random search: the shared conformance suite, then what is special to each."""

from __future__ import annotations

import copy
import itertools
import json
import random
import tracemalloc
from collections import Counter

import pytest
from strategy_conformance import StrategyConformance, drive, make_trial

from sweeper.spec import SweepSpec, build_config, config_key, grid_size, grid_values, parse_sweep
from sweeper.strategies import SuggestionKind, available_methods, strategy_class
from sweeper.strategies import grid as grid_module
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
    assert len(trials) == 2 * 3 * 2 * 2  # lr x layers x optimizer.name x momentum {0.5, 0.75} (W&B's arange)
    assert len({config_key(t.config) for t in trials}) == len(trials)
    assert all(t.config["seed"] == 7 and set(t.config["optimizer"]) == {"name", "momentum"} for t in trials)
    done = strategy.suggest(trials, random.Random(0))
    assert done.kind is SuggestionKind.DONE and "24" in done.reason


def wandb_grid(raw: dict) -> list[dict]:
    """The configurations W&B's own engine (``sweeps.next_run``) hands out for ``raw``, in order."""
    pytest.importorskip("sweeps.grid_search")  # W&B's engine, not the sweeps/ folder of examples
    import sweeps

    runs: list = []
    while (run := sweeps.next_run(copy.deepcopy(raw), runs)) is not None:
        run.state = sweeps.RunState.finished
        runs.append(run)
    return [{name: item["value"] for name, item in run.config.items()} for run in runs]


ORDER_GRID = {
    "method": "grid",
    "parameters": {
        "zeta": {"values": [1, 2]},
        "model-x": {"values": ["a", "b"]},  # sorts after "model" ("-" < "." would put it before "model.act")
        "model": {
            "parameters": {
                "width": {"distribution": "int_uniform", "min": 8, "max": 9},
                "act": {"values": ["relu", "tanh"]},
                "head": {"parameters": {"z": {"values": [0, 1]}, "b": {"value": True}}},
            }
        },
        "alpha": {"distribution": "q_uniform", "min": 0.1, "max": 0.4, "q": 0.1},
        "Beta": {"values": [3]},  # capitals sort first, as in Python
    },
}
Q_GRID = {
    "method": "grid",
    "parameters": {
        "b": {"distribution": "q_uniform", "min": 1, "max": 10, "q": 3},
        "a": {"distribution": "q_uniform", "min": 0, "max": 1.0, "q": 0.25},
        "c": {"distribution": "q_uniform", "min": 1, "max": 3},
    },
}


# Values that make the same configuration: W&B keys them by one hash, so each runs once, as written last.
SAME_VALUE_GRID = {
    "method": "grid",
    "parameters": {"x": {"values": [1, 1.0, 2, 3e6, 3000000]}, "y": {"values": [True, 1, "1"]}},
}


@pytest.mark.parametrize(
    "raw", [ORDER_GRID, Q_GRID, NESTED_GRID, SAME_VALUE_GRID], ids=["order", "q_uniform", "nested", "same"]
)
def test_grid_runs_wandbs_configurations_in_wandbs_order(raw: dict) -> None:
    """Run for run, the same configs as W&B's engine, with the same types: so a run_cap below the
    grid's size runs the same subset."""
    expected = wandb_grid(raw)
    spec = parse_sweep(raw)
    trials = drive(strategy_class("grid")(spec), spec, 1000)
    assert len(trials) == len(expected) == grid_size(spec) > 1
    # JSON, keys sorted: the same configurations in the same order, and 1 is not 1.0.
    assert [json.dumps(t.config, sort_keys=True) for t in trials] == [
        json.dumps(c, sort_keys=True) for c in expected
    ]


def test_random_search_samples_q_uniform_on_its_lattice_not_the_grid() -> None:
    """Sampling rounds to multiples of q (W&B's random search), so the finite space random search
    exhausts is {0, 3, 6, 9}, not the grid's {1, 4, 7}."""
    raw = {
        "method": "random",
        "parameters": {"x": {"distribution": "q_uniform", "min": 1, "max": 10, "q": 3}},
    }
    spec = parse_sweep(raw)
    strategy = strategy_class("random")(spec)
    trials = drive(strategy, spec, 100)
    assert sorted(t.config["x"] for t in trials) == [0, 3, 6, 9]
    assert strategy.suggest(trials, random.Random(0)).kind is SuggestionKind.DONE


def test_grid_skips_combinations_held_by_running_trials() -> None:
    spec = parse_sweep({"method": "grid", "program": "t.py", "parameters": {"x": {"values": [1, 2, 3]}}})
    strategy = strategy_class("grid")(spec)
    running = [make_trial({"x": 1}, TrialState.RUNNING, 1), make_trial({"x": 2}, TrialState.FAILED, 2)]
    assert strategy.suggest(running, random.Random(0)).config == {"x": 3}


# Nested blocks, a constant, float q_uniform, same-value categoricals and dict-valued ones.
MIXED_GRID = {
    "method": "grid",
    "parameters": {
        "zeta": {"values": [{"depth": 2, "act": "relu"}, {"depth": 3}, [1, 2]]},
        "model": {
            "parameters": {
                "width": {"min": 8, "max": 10},
                "head": {"parameters": {"z": {"values": [0, 1.0, 1]}, "b": {"value": True}}},
                "drop": {"distribution": "q_uniform", "min": 0.0, "max": 0.3, "q": 0.1},
            }
        },
        "alpha": {"values": ["x", {"y": None}]},
    },
}


def eager_grid(spec: SweepSpec) -> list[dict]:
    """Every combination as grid search listed them when it built the whole grid up front."""
    params = sorted(spec.parameters, key=lambda p: p.path)
    paths = [p.path for p in params]
    axes = [grid_values(p) or () for p in params]
    return [build_config(spec, dict(zip(paths, combo, strict=True))) for combo in itertools.product(*axes)]


def test_grid_walks_the_combinations_in_itertools_product_order() -> None:
    spec = parse_sweep(MIXED_GRID)
    strategy = strategy_class("grid")(spec)
    expected = eager_grid(spec)
    assert strategy.size == len(expected) == grid_size(spec) == 3 * 3 * 2 * 3 * 2
    assert [strategy.config_at(i) for i in range(strategy.size)] == expected
    trials = drive(strategy, spec, 1000)
    # Bit for bit: values' types and the configs' key order too (JSON as written, keys not sorted).
    assert [json.dumps(t.config) for t in trials] == [json.dumps(c) for c in expected]


def test_a_million_point_grid_is_never_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"values": list(range(100))}
    raw = {"method": "grid", "parameters": {"a": values, "b": values, "c": {"parameters": {"d": values}}}}
    spec = parse_sweep(raw)
    built = []
    real_build = grid_module.build_config
    monkeypatch.setattr(grid_module, "build_config", lambda *args: built.append(1) or real_build(*args))
    tracemalloc.start()
    try:
        strategy = strategy_class("grid")(spec)
        size = strategy.size
        first = strategy.suggest([], random.Random(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == grid_size(spec) == 10**6
    assert first.config == {"a": 0, "b": 0, "c": {"d": 0}}
    assert len(built) == 2  # the first combination's key, and the suggestion's config: no more
    assert peak < 2 * 2**20  # bytes; listing the grid took hundreds of MB
    assert strategy.config_at(10**6 - 1) == {"a": 99, "b": 99, "c": {"d": 99}}
    assert strategy.config_at(12_345) == {"a": 1, "b": 23, "c": {"d": 45}}


def test_grid_skips_taken_combinations_in_any_state_then_is_done() -> None:
    spec = parse_sweep(
        {"method": "grid", "parameters": {"x": {"values": [1, 2, 3]}, "y": {"values": ["a", "b"]}}}
    )
    strategy = strategy_class("grid")(spec)
    grid = eager_grid(spec)
    states = [TrialState.FAILED, TrialState.FINISHED, TrialState.RUNNING, TrialState.LOST, TrialState.STOPPED]
    # Taken out of order, and a failed one twice (its retry): the first free combination is index 2.
    taken = [grid[1], grid[0], grid[4], grid[0], grid[3]]
    trials = [make_trial(c, s, n) for n, (c, s) in enumerate(zip(taken, states, strict=True), 1)]
    rng = random.Random(0)
    assert strategy.suggest(trials, rng).config == grid[2]
    assert strategy.completion(trials, rng) is None
    trials.append(make_trial(grid[2], TrialState.FAILED, 6))
    assert strategy.suggest(trials, rng).config == grid[5]
    assert strategy.completion(trials, rng) is None
    trials.append(make_trial(grid[5], TrialState.RUNNING, 7))
    done = strategy.suggest(trials, rng)
    assert done.kind is SuggestionKind.DONE
    assert done.reason == "all 6 grid combinations have run or are running"  # one still runs
    assert strategy.completion(trials, rng) == done.reason
    ended = [make_trial(t.config, TrialState.FINISHED, t.number) for t in trials]
    assert strategy.suggest(ended, rng).reason == "all 6 grid combinations have run"
    # As many configurations as combinations, one of them off the grid: a combination is still left.
    off_grid = [*trials[:-1], make_trial({"x": 9, "y": "a"}, TrialState.FINISHED, 8)]
    assert strategy.suggest(off_grid, rng).config == grid[5]
    assert strategy.completion(off_grid, rng) is None
    # One combination: said in the singular.
    single = strategy_class("grid")(parse_sweep({"method": "grid", "parameters": {"x": {"value": 1}}}))
    (one,) = [make_trial({"x": 1}, TrialState.RUNNING, 1)]
    assert single.suggest([one], rng).reason == "the grid's one combination has run or is running"
    assert single.suggest([make_trial({"x": 1}, TrialState.FINISHED, 1)], rng).reason == (
        "the grid's one combination has run"
    )


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


def test_random_with_probabilities_draws_by_weight_and_repeats_as_wandb_does() -> None:
    weighted = {"opt": {"values": ["adam", "sgd"], "probabilities": [0.9, 0.1]}}
    spec = parse_sweep(FINITE_RANDOM | {"parameters": weighted})
    trials = drive(strategy_class("random")(spec), spec, 40)
    assert len(trials) == 40  # the sweep does not end after the two values
    assert 30 <= Counter(t.config["opt"] for t in trials)["adam"] <= 40
    # Asked for explicitly, no repeats still holds.
    unique = parse_sweep(spec.raw | {"sweeper": {"sample_without_replacement": True}})
    assert len(drive(strategy_class("random")(unique), unique, 40)) == 2


def test_random_depends_on_the_seed() -> None:
    spec = parse_sweep(MIXED_RANDOM)
    a = drive(strategy_class("random")(spec), spec, 5, seed=1)
    b = drive(strategy_class("random")(spec), spec, 5, seed=2)
    assert [t.config for t in a] != [t.config for t in b]


def test_a_record_given_its_history_keeps_the_config_key_it_made() -> None:
    from sweeper.trials import Trial, TrialState, config_key

    trial = Trial(1, "s", 1, {"lr": 3.0}, TrialState.FINISHED, 0.0)
    assert trial.config_key == config_key({"lr": 3})
    with_history = trial.with_history([])
    assert with_history.history == () and "config_key" in with_history.__dict__
    assert with_history.config_key == trial.config_key
