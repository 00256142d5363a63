"""A sweep's trials as arrays: observed rows with their losses, and rows still pending.

Losses are always minimised (a ``maximize`` metric is negated). Trials without a usable value
(failed, lost, NaN or infinite metric) get a value imputed as ``metric.impute`` says, W&B's rule:
``worst`` (the default), ``best`` or ``latest`` (the trial's last finite logged value, else worst).
Running trials are pending, unless ``metric.impute_while_running`` asks for an imputed value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sweeper.optim.encoding import SpaceCodec
from sweeper.spec.model import Goal, Metric
from sweeper.spec.space import flatten_config
from sweeper.trials import Trial, TrialState


@dataclass(frozen=True)
class Observations:
    X: np.ndarray  # (n, n_params) coordinates, NaN where a parameter is absent
    y: np.ndarray  # (n,) losses to minimise, all finite
    pending: np.ndarray  # (m, n_params) rows of running trials
    taken: frozenset[bytes]  # every row already in the history, to avoid exact repeats
    measured: np.ndarray  # (n,) True where y is the trial's own result, False where it was imputed

    @property
    def n(self) -> int:
        return len(self.y)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _latest(trial: Trial, name: str) -> float | None:
    if trial.history is not None:
        for _, value in reversed(trial.curve(name)):
            if (v := _finite(value)) is not None:
                return v
    return _finite(trial.metric(name))


def row_key(row: np.ndarray) -> bytes:
    return np.round(np.nan_to_num(row, nan=-1.0), 9).tobytes()


def prior_draw(
    codec: SpaceCodec, obs: Observations, gen: np.random.Generator, *, fresh_only: bool = False
) -> np.ndarray | None:
    """The first of 64 prior draws that no trial has yet; if every one repeats a trial, the first
    draw (None with ``fresh_only``)."""
    draws = codec.sample(64, gen)
    for row in draws:
        if row_key(row) not in obs.taken:
            return row
    return None if fresh_only else draws[0]


def observations(trials: Sequence[Trial], codec: SpaceCodec, metric: Metric) -> Observations:
    sign = -1.0 if metric.goal is Goal.MAXIMIZE else 1.0
    rows: list[np.ndarray] = []
    values: list[float | None] = []
    imputes: list[str] = []
    pending: list[np.ndarray] = []
    for trial in trials:
        row = codec.encode(flatten_config(trial.config, codec.parameters))  # dict values stay whole
        if trial.state is TrialState.RUNNING:
            how = metric.impute_while_running
            if how == "false" or (how == "latest" and _latest(trial, metric.name) is None):
                pending.append(row)
                continue
            rows.append(row)
            values.append(_latest(trial, metric.name) if how == "latest" else None)
            imputes.append(how)
            continue
        value = _finite(trial.metric(metric.name))
        rows.append(row)
        if trial.state.gives_a_result and value is not None:
            values.append(value)
            imputes.append("")
        else:
            values.append(_latest(trial, metric.name) if metric.impute == "latest" else None)
            imputes.append(metric.impute)
    known = [sign * v for v, how in zip(values, imputes, strict=True) if v is not None and how == ""]
    worst = max(known) if known else 0.0
    best = min(known) if known else 0.0
    y = np.empty(len(values))
    for i, (v, how) in enumerate(zip(values, imputes, strict=True)):
        if v is not None:
            y[i] = sign * v
        else:
            y[i] = best if how == "best" else worst
    n_params = codec.n_params
    X = np.array(rows).reshape(len(rows), n_params)
    P = np.array(pending).reshape(len(pending), n_params)
    taken = frozenset(row_key(r) for r in [*X, *P])
    measured = np.array([how == "" for how in imputes], dtype=bool)
    return Observations(X=X, y=y, pending=P, taken=taken, measured=measured)
