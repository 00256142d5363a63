"""Sweep files that are well-formed but could not be run: refused when parsed, not when a trial is due."""

from __future__ import annotations

import pytest

from sweeper.spec import SpecError, parse_sweep


@pytest.mark.parametrize(
    ("method", "parameter", "path", "message"),
    [
        (
            "grid",
            {"min": 0, "max": 10**18},
            "parameters",
            "the grid has 1,000,000,000,000,000,001 combinations",
        ),
        (
            "random",
            {"distribution": "q_uniform", "min": 0, "max": 1e308, "q": 1e-308},
            "parameters.x.q",
            "q 1e-308 is too small for the bounds",
        ),
        (
            "random",
            {"distribution": "uniform", "min": -1e308, "max": 1e308},
            "parameters.x",
            "too wide to sample",
        ),
    ],
    ids=["huge-grid", "tiny-q", "infinite-range"],
)
def test_unrunnable_spaces_are_refused(method: str, parameter: dict, path: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_sweep({"method": method, "parameters": {"x": parameter}})
    assert [(p.path, message in p.message) for p in err.value.problems] == [(path, True)]


def test_a_huge_finite_random_space_samples_without_listing_it() -> None:
    import random

    from sweeper.strategies import strategy_class

    spec = parse_sweep({"method": "random", "parameters": {"x": {"min": 0, "max": 10**18}}})
    suggestion = strategy_class("random")(spec).suggest([], random.Random(0))
    assert 0 <= suggestion.config["x"] <= 10**18


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        ({"early_terminate": {"type": "hyperband", "min_iter": 1}}, "early_terminate", "needs a metric"),
        (
            {"metric": {"name": "loss"}, "sweeper": {"resource": "epochs"}},
            "sweeper.resource",
            "method random would ignore it",
        ),
    ],
    ids=["stopping-without-metric", "resource-with-random"],
)
def test_settings_that_would_do_nothing_together_are_refused(extra: dict, path: str, message: str) -> None:
    raw = {"method": "random", "parameters": {"epochs": {"value": 9}, "x": {"min": 0.0, "max": 1.0}}} | extra
    with pytest.raises(SpecError) as err:
        parse_sweep(raw)
    assert [(p.path, message in p.message) for p in err.value.problems] == [(path, True)]


def test_describe_names_the_early_termination_rule() -> None:
    from sweeper.spec import describe

    spec = parse_sweep(
        {
            "method": "random",
            "metric": {"name": "loss"},
            "parameters": {"x": {"min": 0.0, "max": 1.0}},
            "early_terminate": {"type": "asha", "min_iter": 2, "eta": 2},
        }
    )
    assert "asha early termination (min_iter 2, eta 2)" in describe(spec)
