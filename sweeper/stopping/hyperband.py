"""``early_terminate: {type: hyperband}`` with W&B's semantics, decision for decision.

W&B (the ``sweeps`` package) computes bands, then for each band the threshold among every run
that has that many values: the value at index ``int(n / eta)`` of the sorted values at the band.
A running run is checked at the last band it reached: with ``strict`` (the default) its value at
that band, otherwise its best value so far, must not be worse than the band's threshold.
Iterations count the finite values of the metric in the order they were logged, not steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sweeper.spec.model import Hyperband, Metric
from sweeper.stopping.base import StopDecision, StoppingRule, TrialCurve, rank_of

_MIN_ITER_BANDS = 100  # W&B lists this many bands from min_iter


def hyperband_bands(config: Hyperband) -> list[int]:
    """The iterations at which W&B's hyperband checks runs, ascending (duplicates kept, as W&B does)."""
    eta = config.eta
    bands: list[int] = []
    if config.max_iter is not None:
        if config.s is None:
            raise ValueError("hyperband with max_iter needs s")
        band: float = config.max_iter
        for _ in range(config.s):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)
    if config.min_iter is None:
        raise ValueError("hyperband needs min_iter, or max_iter and s")
    band = config.min_iter
    for _ in range(_MIN_ITER_BANDS):
        bands.append(int(band))
        band *= eta
        if math.isinf(band):  # a huge eta: the remaining bands can never be reached
            break
    return bands


class HyperbandRule(StoppingRule):
    name = "hyperband"

    def __init__(self, metric: Metric, config: Hyperband) -> None:
        super().__init__(metric)
        self.config = config
        self.bands = hyperband_bands(config)
        if not self.bands:
            raise ValueError("hyperband has no band: max_iter / eta is below 1")
        self.keep = 1.0 / config.eta

    def thresholds(self, trials: Sequence[TrialCurve]) -> list[float]:
        """Each band's threshold as a loss (``inf`` when no trial reached the band yet)."""
        histories = [[self.loss(p.value) for p in t.iterations()] for t in trials]
        histories = [h for h in histories if h]
        out = []
        for band in self.bands:
            at_band = sorted(h[band - 1] for h in histories if len(h) >= band)
            out.append(at_band[int(self.keep * len(at_band))] if at_band else math.inf)
        return out

    def decide(self, trial: TrialCurve, trials: Sequence[TrialCurve]) -> StopDecision | None:
        history = [self.loss(p.value) for p in trial.iterations()]
        reached = [i for i, band in enumerate(self.bands) if band <= len(history)]
        if not reached:
            return None
        # W&B stops at the first band past the run's length, so the last band reached is the
        # longest prefix of bands that fits (bands ascend).
        index = 0
        for i, band in enumerate(self.bands):
            if band > len(history):
                break
            index = i
        band = self.bands[index]
        threshold = self._threshold(band, trials)
        if self.config.strict:
            condition, what = history[band - 1], ""
        else:
            condition, what = min(history), "best "
        if not condition > threshold:
            return None
        at_band = [
            self.loss(points[band - 1].value)
            for points in (t.iterations() for t in trials)
            if len(points) >= band
        ]
        return self.describe(
            label="hyperband",
            iteration=band,
            rung=index + 1,
            value=self.loss(condition),
            threshold=self.loss(threshold),
            rank=rank_of(condition, at_band),
            competitors=len(at_band),
            eta=self.config.eta,
            what=what,
        )

    def _threshold(self, band: int, trials: Sequence[TrialCurve]) -> float:
        at_band = sorted(
            self.loss(points[band - 1].value)
            for points in (t.iterations() for t in trials)
            if len(points) >= band
        )
        return at_band[int(self.keep * len(at_band))] if at_band else math.inf
