"""Run a sweep's stopping rule for a trial that just reported, reading what it needs from the store."""

from __future__ import annotations

from collections.abc import Sequence

from sweeper.stopping.base import StopDecision, StoppingRule, TrialCurve
from sweeper.store.base import Store
from sweeper.trials import MetricPoint, Trial


def decide_for(
    rule: StoppingRule, store: Store, trial: Trial, points: Sequence[MetricPoint]
) -> StopDecision | None:
    """The rule's decision for a running ``trial`` whose ``points`` were just stored.

    Only a new value of the objective metric can change a decision about this trial, so other
    reports cost nothing. The curves come from the store (one query), never from a cache, so
    every coordinator sharing the store decides alike.
    """
    name = rule.metric.name
    if not trial.state.is_active or trial.stop_requested or not any(p.name == name for p in points):
        return None
    curves = store.metric_curves(trial.sweep_id, name)
    records: dict[int, Trial] = {}
    if rule.needs_trials:
        records = {t.number: t for t in store.list_trials(trial.sweep_id)}
        records[trial.number] = trial
    mine = TrialCurve(trial.number, tuple(curves.get(trial.number, ())), records.get(trial.number))
    others = [
        TrialCurve(number, tuple(pts), records.get(number))
        for number, pts in curves.items()
        if number != trial.number
    ]
    return rule.decide(mine, [mine, *others])
