"""Run a sweep's stopping rule for a trial that just reported, reading what it needs from the store."""

from __future__ import annotations

from collections.abc import Sequence

from sweeper.stopping.base import StopDecision, StoppingRule, TrialCurve
from sweeper.stopping.curves import KnownCurves
from sweeper.store.base import Store
from sweeper.trials import MetricPoint, Trial


def decide_for(
    rule: StoppingRule,
    store: Store,
    trial: Trial,
    points: Sequence[MetricPoint],
    known: KnownCurves | None = None,
) -> StopDecision | None:
    """The rule's decision for a running ``trial`` whose ``points`` were just stored.

    Only a new value of the objective metric can change a decision about this trial, so other
    reports cost nothing. The curves come from the store; ``known`` keeps only the curves of
    ended trials, which never change, so every coordinator sharing the store decides alike
    (without it, every curve is read).
    """
    name = rule.metric.name
    if not trial.state.is_active or trial.stop_requested or not any(p.name == name for p in points):
        return None
    curves = (known or KnownCurves()).read(store, trial.sweep_id, name)
    found = curves.get(trial.number)
    mine = TrialCurve(trial.number, found.points if found is not None else (), trial)
    others = [curve for number, curve in curves.items() if number != trial.number]
    return rule.decide(mine, [mine, *others])
