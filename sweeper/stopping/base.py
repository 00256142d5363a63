"""The stopping-rule contract: decide from the objective metric's curves whether a trial stops now.

A rule is a function of the data it is given (the trial that just reported and every trial of
its sweep, each with the points of the objective metric), so a coordinator restarted on the
same store makes the same decisions.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from sweeper.spec.model import Goal, Metric
from sweeper.trials import MetricPoint, Trial


@dataclass(frozen=True)
class TrialCurve:
    """One trial's points of the objective metric, in (step, seq) order, as they were logged."""

    number: int  # the trial's number within its sweep
    points: tuple[MetricPoint, ...]
    trial: Trial | None = None  # the trial's record

    def iterations(self) -> list[MetricPoint]:
        """The points that count as iterations (see :func:`iteration_points`), worked out once per
        curve (an ended trial's curve is kept between decisions): not to be changed."""
        return self._iterations

    @functools.cached_property
    def _iterations(self) -> list[MetricPoint]:
        return iteration_points(self.points)


def iteration_points(points: Iterable[MetricPoint]) -> list[MetricPoint]:
    """Of one metric's points in (step, seq) order, those that count as iterations: the n-th is
    the n-th value logged, except that a step counts once, with the first value logged there (a
    summary value sent when a run ends, on its last step, adds no iteration and changes none,
    so decisions already taken stay the ones a restarted coordinator takes). Step 0 is the
    exception: MLflow puts every value logged without a step there, and each counts, until the
    run logs at a later step (a value logged without a step after that, a final "best" say,
    changes nothing). NaN and infinite values are dropped before counting, as W&B does."""
    points = list(points)
    moved_on = min((p.seq for p in points if p.step > 0), default=math.inf)
    out: list[MetricPoint] = []
    for point in points:
        if point.step == 0 and point.seq > moved_on:
            continue
        if out and point.step == out[-1].step != 0:
            continue
        out.append(point)
    return [p for p in out if math.isfinite(p.value)]


@dataclass(frozen=True)
class StopDecision:
    """Why a trial stops. ``reason`` is what the trial records; the fields say the same for code."""

    reason: str
    rule: str
    iteration: int  # the n-th finite value of the metric the decision looked at
    rung: int  # 1-based index of the rung (band) among the rule's rungs
    value: float  # the trial's value that was compared, in the metric's own sign
    threshold: float  # the value it had to match or beat
    rank: int  # 1 is best; ties share the better rank
    competitors: int  # how many trials had a value at that rung, the trial included


class StoppingRule(ABC):
    """Subclasses set ``name`` and implement :meth:`decide`."""

    name: ClassVar[str]

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    @abstractmethod
    def decide(self, trial: TrialCurve, trials: Sequence[TrialCurve]) -> StopDecision | None:
        """A decision to stop the running ``trial`` now, or None to let it go on.

        ``trials`` holds every trial of the sweep that logged the metric (``trial`` among them),
        whatever its state: finished and stopped trials set the bar for running ones.
        """

    # Helpers shared by the rules: values are compared as losses (smaller is better).

    def loss(self, value: float) -> float:
        return -value if self.metric.goal is Goal.MAXIMIZE else value

    def describe(
        self,
        *,
        label: str,
        iteration: int,
        rung: int,
        value: float,
        threshold: float,
        rank: int,
        competitors: int,
        eta: float,
        what: str = "",
    ) -> StopDecision:
        """A decision with its reason in words, values shown in the metric's own sign."""
        name = self.metric.name
        reason = (
            f"{label}: at iteration {iteration} (rung {rung}) {what}{name}={value:.4g} is worse than "
            f"the threshold {threshold:.4g} (rank {rank} of {competitors}; keeps the top 1/{eta:g})"
        )
        return StopDecision(
            reason=reason,
            rule=self.name,
            iteration=iteration,
            rung=rung,
            value=value,
            threshold=threshold,
            rank=rank,
            competitors=competitors,
        )


def rank_of(loss: float, losses: Sequence[float]) -> int:
    """1 + how many of ``losses`` are strictly better (smaller) than ``loss``."""
    return 1 + sum(1 for other in losses if other < loss)
