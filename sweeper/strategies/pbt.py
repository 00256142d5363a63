"""``method: pbt``: population-based training as stop-and-restart over immutable trials.

``sweeper.pbt.population`` members each run as a trial (``Trial.member`` is the slot). The sweep's
stopping rule (:class:`sweeper.stopping.PbtRule`) stops a member in the bottom quantile and names
the member it copies; this strategy then fills the slot with a new trial whose configuration is
the donor's, explored, and whose ``restore_from`` is the donor's checkpoint. A slot ends when its
latest trial finishes (or fails with no retries left); the sweep ends when every slot has ended.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.checkpoints import checkpoint_location
from sweeper.spec import SweepSpec, build_config, flatten_config, sample
from sweeper.spec.distributions import QUANTIZED, quantize
from sweeper.spec.model import Distribution, Parameter, Pbt
from sweeper.stopping.pbt import exploited_trial
from sweeper.strategies.base import Strategy, Suggestion, SuggestionKind
from sweeper.strategies.random_search import RandomSearch
from sweeper.strategies.registry import register
from sweeper.trials import Trial, TrialState

D = Distribution
_CATEGORICAL = (D.CATEGORICAL, D.CATEGORICAL_W_PROBABILITIES)


def value_bounds(p: Parameter) -> tuple[float, float]:
    """The smallest and largest value ``p`` can take (infinite for normal distributions)."""
    d = p.distribution
    if d in (D.LOG_UNIFORM, D.Q_LOG_UNIFORM):  # bounds are base-e exponents
        return math.exp(p.min), math.exp(p.max)
    if d is D.INV_LOG_UNIFORM:
        return math.exp(-p.max), math.exp(-p.min)
    if d in (D.BETA, D.Q_BETA):
        return 0.0, 1.0
    if d in (D.LOG_NORMAL, D.Q_LOG_NORMAL):
        return 0.0, math.inf
    if p.min is not None and p.max is not None:
        return float(p.min), float(p.max)
    return -math.inf, math.inf


def perturb(p: Parameter, value: Any, config: Pbt, rng: random.Random) -> Any:
    """One explored value: resampled with ``resample_probability``; else a categorical value moves to a
    neighbour in the listed order and a number is multiplied by one of ``perturbation_factors``."""
    d = p.distribution
    if d is D.CONSTANT:
        return p.value
    if rng.random() < config.resample_probability:
        return sample(p, rng)
    if d in _CATEGORICAL:
        values = list(p.values)
        index = values.index(value) if value in values else rng.randrange(len(values))
        if len(values) == 1:
            return values[0]
        step = rng.choice((-1, 1))
        if not 0 <= index + step < len(values):
            step = -step
        return values[index + step]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return sample(p, rng)  # a value from outside the space: start it afresh
    factor = rng.choice(config.perturbation_factors)
    low, high = value_bounds(p)
    moved = min(max(value * factor, low), high)
    if d is D.INT_UNIFORM:
        rounded = round(moved)
        if rounded == value:  # a small integer: move by one in the factor's direction
            rounded = value + (1 if factor > 1 else -1)
        return int(min(max(rounded, p.min), p.max))
    if d in QUANTIZED:
        return quantize(moved, p.q)
    return float(moved)


def explore(spec: SweepSpec, config: Mapping[str, Any], pbt: Pbt, rng: random.Random) -> dict[str, Any]:
    """The donor's configuration with every parameter explored once, in the spec's order."""
    flat = flatten_config(config, spec)  # a dict-valued parameter stays one value
    values = {p.path: perturb(p, flat.get(p.path), pbt, rng) for p in spec.parameters}
    return build_config(spec, values)


def latest_by_member(trials: Sequence[Trial], population: int) -> dict[int, Trial]:
    latest: dict[int, Trial] = {}
    for trial in trials:
        member = trial.member
        if member is not None and 0 <= member < population:
            if member not in latest or trial.number > latest[member].number:
                latest[member] = trial
    return latest


@register
class PbtSearch(RandomSearch):
    """Random initial members; then each exploited slot restarts from a better member's checkpoint."""

    method = "pbt"

    def __init__(self, spec: SweepSpec) -> None:
        super().__init__(spec)
        self.config = spec.options.pbt or Pbt()

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        problems = []
        if spec.metric is None:
            problems.append(("metric", "required: method pbt ranks the population by it"))
        if spec.early_terminate is not None:
            problems.append(("early_terminate", "method pbt stops and restarts members itself; remove it"))
        if all(p.distribution is D.CONSTANT for p in spec.parameters):
            problems.append(("parameters", "method pbt needs at least one parameter that is not a constant"))
        return problems

    def completion(self, trials: Sequence[Trial], rng: random.Random) -> str | None:
        return Strategy.completion(self, trials, rng)  # it ends with its population, not its space

    def suggest(self, trials: Sequence[Trial], rng: random.Random) -> Suggestion:
        population = self.config.population
        latest = latest_by_member(trials, population)
        by_number = {t.number: t for t in trials}
        # Exploited members first, while their donors still train: a donor that finished left the
        # checkpoint of its last epoch, from which a restarted member would have nothing to train
        # (then the member stands as it is).
        for member, last in sorted(latest.items()):
            donor = by_number.get(exploited_trial(last.stop_requested or last.stop_reason) or 0)
            if donor is None or donor.state is TrialState.FINISHED:
                continue
            config = explore(self.spec, donor.config, self.config, rng)
            where = checkpoint_location(self.config.checkpoints, donor.sweep_id, donor.number)
            return Suggestion.run(config, member=member, restore_from=where)
        for member in range(population):
            if member not in latest:
                first = super().suggest(trials, rng)  # never a configuration already run, when it can
                config = first.config if first.kind is SuggestionKind.RUN else self._draw(rng)
                assert config is not None
                return Suggestion.run(config, member=member)
        training = sum(1 for t in latest.values() if t.state.is_active)
        if training:
            return Suggestion.wait(f"{training} of {population} population members are training")
        return Suggestion.done(f"every member of the population of {population} has finished")
