"""Reading results: ranking trials by the sweep's metric, and short text forms for people."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sweeper.spec import Goal, SweepSpec, flatten_config
from sweeper.trials import Trial


def best_of(spec: SweepSpec, trials: Sequence[Trial]) -> Trial | None:
    """The finished (or early-stopped) trial with the best final value of the sweep's metric."""
    metric = spec.metric
    if metric is None:
        return None
    best: Trial | None = None
    for trial in trials:
        value = trial.metric(metric.name)
        # Not a NaN or an infinity either: a loss of -inf is a diverged run, not the best one.
        if not trial.state.gives_a_result or value is None or not math.isfinite(value):
            continue
        if best is None or metric.is_better(value, best.metric(metric.name)):  # type: ignore[arg-type]
            best = trial
    return best


def ranked(spec: SweepSpec, trials: Sequence[Trial]) -> list[Trial]:
    """Trials with a value of the sweep's metric, best first: results before the values of trials
    still running, failed or lost (no result: a lost trial's configuration runs again), and NaN
    and infinities last, as :func:`best_of` never picks them."""
    metric = spec.metric
    if metric is None:
        return list(trials)
    scored = [t for t in trials if t.metric(metric.name) is not None]
    sign = 1.0 if metric.goal is Goal.MINIMIZE else -1.0

    def key(t: Trial) -> tuple[bool, bool, float]:
        value = t.summary[metric.name]
        finite = math.isfinite(value)
        return (not t.state.gives_a_result, not finite, sign * value if finite else 0.0)

    return sorted(scored, key=key)


def format_config(config: Mapping[str, Any], limit: int = 6) -> str:
    """``lr=0.01 batch_size=32 optimizer.name=adam ...`` for progress lines."""
    parts = [f"{'.'.join(path)}={_shown(value)}" for path, value in flatten_config(config).items()]
    return " ".join(parts[:limit]) + (" ..." if len(parts) > limit else "")


def _shown(value: Any) -> str:
    """A value short, a float still a float (``280.0``, as the script gets it, not ``280``)."""
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.4g}"
    return text if any(c in text for c in ".ein") else f"{text}.0"
