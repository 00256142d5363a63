"""One suite every strategy runs through: suggest, pending trials, results, failures, restart.

A strategy module adds itself by listing a sweep in ``SPECS`` of tests/test_strategies.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.spec import SweepSpec, config_key, flatten_config, grid_values, space_values
from sweeper.strategies import Strategy, SuggestionKind, strategy_class
from sweeper.trials import Trial, TrialState

_ids = itertools.count(1)


def make_trial(config: Mapping[str, Any], state: TrialState, number: int, **summary: float) -> Trial:
    return Trial(
        id=next(_ids),
        sweep_id="s",
        number=number,
        config=config,
        state=state,
        created_at=0.0,
        summary=summary,
    )


def drive(strategy: Strategy, spec: SweepSpec, steps: int, seed: int = 0, finish: bool = True) -> list[Trial]:
    """Ask for ``steps`` suggestions, recording each as a trial (finished, or left running)."""
    trials: list[Trial] = []
    for n in range(steps):
        suggestion = strategy.suggest(trials, random.Random(f"{seed}:{n}"))
        if suggestion.kind is not SuggestionKind.RUN:
            break
        state = TrialState.FINISHED if finish else TrialState.RUNNING
        value = float(n % 7)
        metric = {spec.metric.name: value} if spec.metric else {}
        trial = make_trial(suggestion.config, state, n + 1, **metric)
        # Population slots and checkpoints travel with the trial, as the store keeps them.
        trial = dataclasses.replace(trial, member=suggestion.member, restore_from=suggestion.restore_from)
        trials.append(trial)
    return trials


def assert_in_space(spec: SweepSpec, config: Mapping[str, Any]) -> None:
    flat = flatten_config(config)
    assert set(flat) == {p.path for p in spec.parameters}
    for p in spec.parameters:
        choices = grid_values(p) if spec.method == "grid" else space_values(p)
        if choices is not None:
            assert flat[p.path] in choices, (p.name, flat[p.path])
        elif p.min is not None and p.distribution.value in ("uniform", "int_uniform"):
            assert p.min <= flat[p.path] <= p.max


class StrategyConformance:
    """Subclasses set ``spec`` (a parsed SweepSpec)."""

    spec: SweepSpec

    def strategy(self) -> Strategy:
        return strategy_class(self.spec.method)(self.spec)

    def test_first_suggestion_is_in_the_space(self) -> None:
        suggestion = self.strategy().suggest([], random.Random(0))
        assert suggestion.kind is SuggestionKind.RUN
        assert_in_space(self.spec, suggestion.config)

    def test_same_history_and_seed_give_the_same_decisions(self) -> None:
        first = drive(self.strategy(), self.spec, 8, seed=3)
        again = drive(self.strategy(), self.spec, 8, seed=3)  # a fresh instance: a restart
        assert [t.config for t in first] == [t.config for t in again]

    def test_running_trials_are_not_suggested_again_in_a_finite_space(self) -> None:
        trials = drive(self.strategy(), self.spec, 6, finish=False)
        keys = [config_key(t.config) for t in trials]
        assert len(set(keys)) == len(keys)

    def test_failures_and_stops_in_the_history_are_accepted(self) -> None:
        strategy = self.strategy()
        trials = drive(strategy, self.spec, 3)
        states = [TrialState.FAILED, TrialState.STOPPED, TrialState.LOST]
        history = [make_trial(t.config, s, t.number) for t, s in zip(trials, states, strict=True)]
        suggestion = strategy.suggest(history, random.Random(1))
        assert suggestion.kind in (SuggestionKind.RUN, SuggestionKind.DONE)
        if suggestion.kind is SuggestionKind.RUN:
            assert_in_space(self.spec, suggestion.config)

    def test_completion_agrees_with_suggest(self) -> None:
        # The coordinator asks completion() when a trial ends and suggest() when an agent asks:
        # both must see the same end, at every point of a history, finite spaces run to their end.
        strategy = self.strategy()
        trials = drive(strategy, self.spec, 40)
        for n in range(len(trials) + 1):
            history = trials[:n]
            suggestion = strategy.suggest(history, random.Random(f"c:{n}"))
            reason = strategy.completion(history, random.Random(f"c:{n}"))
            expected = suggestion.reason if suggestion.kind is SuggestionKind.DONE else None
            assert reason == expected, n

    def test_nan_results_do_not_break_it(self) -> None:
        assert self.spec.metric is not None, "conformance specs name a metric"
        trials = [
            make_trial(t.config, TrialState.FINISHED, t.number, **{self.spec.metric.name: float("nan")})
            for t in drive(self.strategy(), self.spec, 3)
        ]
        suggestion = self.strategy().suggest(trials, random.Random(5))
        assert suggestion.kind in (SuggestionKind.RUN, SuggestionKind.DONE)


def configs(trials: Sequence[Trial]) -> list[Mapping[str, Any]]:
    return [t.config for t in trials]
