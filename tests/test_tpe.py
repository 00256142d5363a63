"""method: tpe: search quality, conditional spaces, pending trials, failures."""

from __future__ import annotations

import random
import statistics

import pytest
from model_search_problems import after_a_long_random_history, run, sphere, sphere_spec
from strategy_conformance import assert_in_space, make_trial

from sweeper.spec import SpecError, parse_sweep
from sweeper.strategies import SuggestionKind, strategy_class
from sweeper.trials import TrialState


def test_tpe_requires_a_metric() -> None:
    with pytest.raises(SpecError, match="metric: required for method tpe"):
        parse_sweep({"method": "tpe", "parameters": {"x": {"min": 0.0, "max": 1.0}}})


def test_tpe_beats_random_search() -> None:
    def best(method: str) -> list[float]:
        return [
            min(t.summary["loss"] for t in run(method, sphere, sphere_spec(method), 80, s)) for s in range(5)
        ]

    tpe, rand = statistics.median(best("tpe")), statistics.median(best("random"))
    assert tpe < 0.5 * rand, (tpe, rand)


def test_tpe_prefers_the_good_category_after_start_up() -> None:
    spec = parse_sweep(
        {
            "method": "tpe",
            "metric": {"name": "loss"},
            "parameters": {
                "x0": {"min": -1.0, "max": 1.0},
                "x1": {"min": -1.0, "max": 1.0},
                "kind": {"values": ["a", "b", "c", "d", "e"]},
            },
        }
    )

    def loss(c: dict) -> float:
        return (c["x0"] ** 2 + c["x1"] ** 2) / 2 + (0.0 if c["kind"] == "c" else 3.0)

    for seed in range(5):
        late = [t.config["kind"] for t in run("tpe", loss, spec, 40, seed=seed)[-20:]]
        assert late.count("c") >= 10, (seed, late)  # random search would pick it 4 times in 20


def test_parameters_absent_from_a_trial_are_not_observed() -> None:
    # Conditional space: older trials ran before "momentum" existed, or used an optimizer without it.
    spec = parse_sweep(
        {
            "method": "tpe",
            "metric": {"name": "loss"},
            "parameters": {"lr": {"min": 0.0, "max": 1.0}, "momentum": {"min": 0.0, "max": 1.0}},
        }
    )
    rng = random.Random(0)
    trials = []
    for n in range(30):
        lr = rng.random()
        config = {"lr": lr} if n % 2 else {"lr": lr, "momentum": rng.random()}
        trials.append(make_trial(config, TrialState.FINISHED, n + 1, loss=(lr - 0.3) ** 2))
    picks = [strategy_class("tpe")(spec).suggest(trials, random.Random(k)).config for k in range(20)]
    for config in picks:
        assert_in_space(spec, config)
    assert statistics.median(abs(c["lr"] - 0.3) for c in picks) < 0.15


def test_pending_trials_are_not_repeated_in_a_finite_space() -> None:
    spec = parse_sweep(
        {
            "method": "tpe",
            "metric": {"name": "loss"},
            "parameters": {"a": {"values": [1, 2, 3, 4]}, "b": {"min": 0, "max": 4}},
        }
    )
    trials = run("tpe", lambda c: abs(c["a"] - 2) + abs(c["b"] - 3), spec, 12, seed=0)
    strategy = strategy_class("tpe")(spec)
    for n in range(6):  # six agents ask while the others still run
        config = strategy.suggest(trials, random.Random(n)).config
        trials.append(make_trial(config, TrialState.RUNNING, len(trials) + 1))
    keys = [(t.config["a"], t.config["b"]) for t in trials]
    assert len(set(keys)) == len(keys)


def test_failed_and_nan_results_do_not_break_it() -> None:
    spec = sphere_spec("tpe")
    trials = run("tpe", sphere, spec, 12, seed=3)
    history = [
        make_trial(t.config, state, t.number, **extra)
        for t, (state, extra) in zip(
            trials,
            [(TrialState.FAILED, {}), (TrialState.FINISHED, {"loss": float("nan")}), (TrialState.LOST, {})]
            * 4,
            strict=True,
        )
    ]
    suggestion = strategy_class("tpe")(spec).suggest(history, random.Random(0))
    assert suggestion.kind is SuggestionKind.RUN
    assert_in_space(spec, suggestion.config)


def test_past_1000_trials_the_model_still_steers_instead_of_drawing_at_random() -> None:
    suggested, two_percent = after_a_long_random_history("tpe", 1200)
    # Random draws would put 5 of 20 below that line about once in 25,000 runs.
    assert sum(loss < two_percent for loss in suggested) >= 5, (suggested, two_percent)
