"""Methods hyperband and bohb: the resource in the spec, the allocation, BOHB's model."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sweeper.spec import SpecError, parse_sweep
from sweeper.spec.model import Resource
from sweeper.stopping import BracketedAshaRule, build_rule, resource_of
from sweeper.strategies import SuggestionKind, strategy_class
from sweeper.strategies.bohb import (
    BohbSearch,
    ParzenSettings,
    axes_of,
    can_fit,
    good_count,
    model_budget,
    propose,
    split,
)
from sweeper.trials import MetricPoint, Trial, TrialState


def sweep(method: str = "hyperband", **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "method": method,
        "program": "train.py",
        "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1.0},
            "width": {"values": [16, 32, 64]},
            "epochs": {"value": 27},
        },
        "sweeper": {"resource": "epochs"},
    }
    raw.update(extra)
    return raw


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_sweep(raw)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize("method", ["hyperband", "bohb"])
def test_resource_is_filled_from_its_constant_parameter(method: str) -> None:
    spec = parse_sweep(sweep(method))
    assert spec.options.resource == Resource("epochs")
    assert resource_of(spec) == Resource("epochs", min=1, max=27, eta=3)
    rule = build_rule(spec)
    assert isinstance(rule, BracketedAshaRule) and rule.schedule.count == 4
    suggestion = strategy_class(method)(spec).suggest([], random.Random(0))
    assert suggestion.kind is SuggestionKind.RUN and suggestion.config["epochs"] == 27


def test_one_bracket_is_asha_over_the_resource() -> None:
    spec = parse_sweep(sweep(sweeper={"resource": {"name": "epochs", "brackets": 1}}))
    rule = build_rule(spec)
    assert isinstance(rule, BracketedAshaRule) and rule.schedule.count == 1
    assert {rule.schedule.bracket_of(n) for n in range(1, 50)} == {0}
    assert rule.schedule.rungs(0) == [1, 3, 9]  # then each survivor runs to 27


def test_resource_mapping_form() -> None:
    raw = sweep(sweeper={"resource": {"name": "epochs", "min": 3, "max": 27, "eta": 3}})
    assert resource_of(parse_sweep(raw)) == Resource("epochs", min=3, max=27, eta=3)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"sweeper": {}}, "sweeper.resource: required by method hyperband: the parameter to allocate"),
        ({"sweeper": {"resource": "epoch"}}, "sweeper.resource.name: no parameter 'epoch'"),
        ({"sweeper": {"resource": {"min": 1}}}, "sweeper.resource.name: required"),
        (
            {"sweeper": {"resource": {"name": "epochs", "mni": 1}}},
            "sweeper.resource.mni: unknown key; did you mean 'min'?",
        ),
        (
            {"sweeper": {"resource": {"name": "epochs", "min": 0}}},
            "sweeper.resource.min: expected an integer >= 1, got 0",
        ),
        (
            {"sweeper": {"resource": {"name": "epochs", "eta": 1}}},
            "sweeper.resource.eta: expected a number > 1, got 1",
        ),
        (
            {"sweeper": {"resource": {"name": "epochs", "max": 9}}},
            "sweeper.resource.max: is 9 but parameters.epochs is 27",
        ),
        (
            {"sweeper": {"resource": {"name": "epochs", "min": 10, "max": 20}}},
            "max (20) must be at least min * eta (10 * 3)",
        ),
        (
            {"sweeper": {"resource": 5}},
            "sweeper.resource: expected a mapping such as epochs or {name: epochs",
        ),
        (
            {"early_terminate": {"type": "hyperband", "min_iter": 1}},
            "early_terminate: method hyperband stops trials itself",
        ),
        ({"metric": None}, "metric"),
    ],
)
def test_resource_problems(change: dict[str, Any], expected: str) -> None:
    raw = sweep(**change)
    if change.get("metric", 0) is None:
        del raw["metric"]
        expected = "metric: required: method hyperband compares trials by it at each rung"
    found = problems_of(raw)
    assert any(expected in p for p in found), found


def test_resource_must_be_a_constant_integer() -> None:
    raw = sweep()
    raw["parameters"]["epochs"] = {"min": 1, "max": 27}
    assert any("parameters.epochs: the resource must be a constant integer" in p for p in problems_of(raw))
    raw["parameters"]["epochs"] = {"value": 2}
    assert any("parameters.epochs: 2 is below min * eta (1 * 3)" in p for p in problems_of(raw))


# --- BOHB's model ---------------------------------------------------------------


def toy(method: str = "bohb") -> dict[str, Any]:
    return {
        "method": method,
        "metric": {"name": "loss"},
        "parameters": {
            "x": {"min": 0.0, "max": 1.0},
            "y": {"min": 0.0, "max": 1.0},
            "kind": {"values": ["a", "b", "c"]},
            "epochs": {"value": 9},
        },
        "sweeper": {"resource": "epochs"},
    }


def loss_of(config: dict[str, Any]) -> float:
    return (config["x"] - 0.8) ** 2 + (config["y"] - 0.2) ** 2 + (0.0 if config["kind"] == "b" else 0.3)


def finished(number: int, config: dict[str, Any], **summary: float) -> Trial:
    return Trial(
        id=number,
        sweep_id="s",
        number=number,
        config=config,
        state=TrialState.FINISHED,
        created_at=0.0,
        summary=summary,
    )


def test_bohb_proposes_better_configurations_than_random_after_results() -> None:
    spec = parse_sweep(toy())
    strategy = BohbSearch(spec)
    rng = random.Random(1)
    history = []
    for n in range(1, 31):  # 30 random results at the full budget
        config = {"x": rng.random(), "y": rng.random(), "kind": rng.choice("abc"), "epochs": 9}
        history.append(finished(n, config, loss=loss_of(config)))
    model, chance = [], []
    for i in range(40):
        r = random.Random(f"probe:{i}")
        suggestion = strategy.suggest(history, r)
        model.append(loss_of(suggestion.config))
        chance.append(
            loss_of(strategy_class("random")(spec).suggest(history, random.Random(f"probe:{i}")).config)
        )
    assert sorted(model)[20] < 0.5 * sorted(chance)[20]  # median loss of its proposals is far lower


def test_bohb_models_a_categorical_whose_values_are_dicts() -> None:
    raw = toy()
    raw["parameters"]["kind"] = {"values": [{"depth": 1}, {"depth": 2}, {"depth": 3}]}
    strategy = BohbSearch(parse_sweep(raw))
    rng = random.Random(1)
    history = []
    for n in range(1, 31):
        depth = rng.choice([1, 2, 3])
        config = {"x": rng.random(), "y": rng.random(), "kind": {"depth": depth}, "epochs": 9}
        history.append(finished(n, config, loss=loss_of({**config, "kind": "b" if depth == 2 else "a"})))
    # The model (not a random draw) proposes: it learnt that depth 2 is the good choice.
    proposed = [strategy.suggest(history, random.Random(f"probe:{i}")).config["kind"] for i in range(20)]
    assert proposed.count({"depth": 2}) >= 14, proposed


def test_bohb_reads_budgets_from_histories_or_stop_reasons() -> None:
    spec = parse_sweep(toy())
    strategy = BohbSearch(spec)
    config = {"x": 0.5, "y": 0.5, "kind": "a", "epochs": 9}
    points = tuple(MetricPoint("loss", 1.0 / (i + 1), step=i, seq=i, time=i) for i in range(4))
    # A value sent again at step 1 (a late duplicate): no budget of its own, no value changed.
    points += (MetricPoint("loss", 0.01, step=1, seq=4, time=5),)
    with_history = Trial(
        id=1, sweep_id="s", number=1, config=config, state=TrialState.RUNNING, created_at=0.0, history=points
    )
    stopped = Trial(
        id=2,
        sweep_id="s",
        number=2,
        config=config,
        state=TrialState.STOPPED,
        created_at=0.0,
        summary={"loss": 0.7},
        stop_reason="hyperband bracket 0: at iteration 3 (rung 2) loss=0.7 ...",
    )
    done = finished(3, config, loss=0.1)
    results = strategy.budget_results([with_history, stopped, done])
    assert {b: [v for _, v in r] for b, r in results.items()} == {1: [1.0], 3: [1.0 / 3, 0.7], 9: [0.1]}


def test_bohb_falls_back_to_random_without_enough_results() -> None:
    spec = parse_sweep(toy())
    a = BohbSearch(spec).suggest([], random.Random(3))
    b = strategy_class("hyperband")(spec).suggest([], random.Random(3))
    assert a.kind is SuggestionKind.RUN and set(a.config) == set(b.config)


def test_axes_skip_constants_and_the_resource() -> None:
    spec = parse_sweep(toy())
    assert [a.parameter.name for a in axes_of(spec, "epochs")] == ["x", "y", "kind"]
    assert [a.categories for a in axes_of(spec, "epochs")] == [0, 0, 3]


def test_bohb_fits_the_largest_budget_whose_results_split_into_good_and_bad_sets() -> None:
    settings = ParzenSettings()
    # 3 searched parameters: the good and the bad set each need 4 points, so 8 results at least.
    assert [can_fit(n, 3, settings) for n in (6, 7, 8, 30)] == [False, False, True, True]
    assert good_count(8, 3, settings) == 4 and good_count(40, 3, settings) == 6
    assert model_budget({9: 7, 3: 12, 1: 30}, 3, settings) == 3
    assert model_budget({9: 8, 3: 12}, 3, settings) == 9
    assert model_budget({9: 2, 3: 5}, 3, settings) is None


def test_bohb_good_and_bad_sets_are_disjoint() -> None:
    settings = ParzenSettings()
    losses = [0.5, 0.1, 0.9, 0.3, 0.2, 0.7, 0.8, 0.4, 0.6]
    good, bad = split(losses, 3, settings)  # 4 good points at least, whatever the 15%
    assert good == [1, 4, 3, 7]
    assert bad == [0, 8, 5, 6, 2]  # the rest, none of the good ones among them


def test_bohb_proposes_near_the_good_results() -> None:
    settings = ParzenSettings()
    x = [[0.9], [0.91], [0.1], [0.12], [0.14], [0.5], [0.52], [0.3]]
    losses = [0.0, 0.01, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    best = propose(x, losses, [0], settings, seed=7)[0]
    assert abs(best[0] - 0.9) < 0.15
