"""Stopping rules: decide, when a metric arrives, whether a running trial stops early.

>>> from sweeper.spec import parse_sweep
>>> from sweeper.stopping import build_rule
>>> spec = parse_sweep({"method": "random", "metric": {"name": "loss"},
...                     "early_terminate": {"type": "hyperband", "min_iter": 3},
...                     "parameters": {"x": {"min": 0.0, "max": 1.0}}})
>>> build_rule(spec).bands[:3]
[3, 9, 27]
"""

from __future__ import annotations

from sweeper.stopping.asha import AshaRule, BracketedAshaRule
from sweeper.stopping.base import StopDecision, StoppingRule, TrialCurve, iteration_points
from sweeper.stopping.brackets import BracketSchedule
from sweeper.stopping.build import RESOURCE_METHODS, build_rule, resource_of
from sweeper.stopping.curves import KnownCurves
from sweeper.stopping.evaluate import decide_for
from sweeper.stopping.hyperband import HyperbandRule, hyperband_bands
from sweeper.stopping.pbt import ExploitDecision, PbtRule, exploited_trial
from sweeper.stopping.rungs import promotion_count, rung_levels

__all__ = [
    "RESOURCE_METHODS",
    "AshaRule",
    "BracketSchedule",
    "BracketedAshaRule",
    "ExploitDecision",
    "HyperbandRule",
    "KnownCurves",
    "PbtRule",
    "StopDecision",
    "StoppingRule",
    "TrialCurve",
    "build_rule",
    "decide_for",
    "exploited_trial",
    "hyperband_bands",
    "iteration_points",
    "promotion_count",
    "resource_of",
    "rung_levels",
]
