"""Sweep files that are valid but almost surely not what their author meant: said, not refused.

W&B's ``log_uniform`` (and ``inv_log_uniform``, ``q_log_uniform``) takes base-e exponents as its
bounds, a classic surprise: ``{distribution: log_uniform, min: 0.0001, max: 0.1}`` samples values
from 1.0001 to 1.105, not learning rates. W&B itself now steers people to ``log_uniform_values``.
"""

from __future__ import annotations

import math

from sweeper.spec.fields import show
from sweeper.spec.model import Distribution as D
from sweeper.spec.model import Hyperband, SweepSpec
from sweeper.spec.space import distinct

_EXPONENT_BOUNDS = (D.LOG_UNIFORM, D.INV_LOG_UNIFORM, D.Q_LOG_UNIFORM)


def spec_advice(spec: SweepSpec) -> list[str]:
    """One line per likely mistake, each naming the key path and what to write instead."""
    return _exponent_bounds(spec) + _repeated_values(spec) + _unused_hyperband_s(spec)


def _unused_hyperband_s(spec: SweepSpec) -> list[str]:
    """``s`` beside ``min_iter`` without ``max_iter``: W&B (and sweeper) build the brackets from
    min_iter and eta, and s counts brackets only below max_iter."""
    rule = spec.early_terminate
    if (
        isinstance(rule, Hyperband)
        and rule.s is not None
        and rule.min_iter is not None
        and rule.max_iter is None
    ):
        return [
            "early_terminate.s: not used without max_iter: hyperband stops trials at min_iter, "
            "min_iter*eta, min_iter*eta^2, ... (as W&B does); give max_iter and s instead to "
            "count brackets down from max_iter"
        ]
    return []


def _repeated_values(spec: SweepSpec) -> list[str]:
    """A grid's values that make one configuration twice (run once, as in W&B's grid), such as
    ``[yes, on]``, which YAML reads as True twice. Elsewhere a repeat weighs a value, on purpose."""
    if spec.method != "grid":
        return []
    lines = []
    for p in spec.parameters:
        if not p.values or len(kept := distinct(p.values)) == len(p.values):
            continue
        given = ", ".join(show(v) for v in p.values)
        flags = [v for v in p.values if isinstance(v, bool)]
        if len(set(flags)) < len(flags):
            lines.append(
                f"{p.key_path}.values: [{given}] holds a boolean twice: YAML reads yes/no and on/off as "
                "true/false; quote them ('on') to keep them strings"
            )
        else:
            lines.append(
                f"{p.key_path}.values: [{given}] makes {len(kept)} distinct values; the grid runs each "
                "once, as W&B's does"
            )
    return lines


def _exponent_bounds(spec: SweepSpec) -> list[str]:
    lines = []
    for p in spec.parameters:
        if p.distribution not in _EXPONENT_BOUNDS or p.min is None or p.max is None:
            continue
        # Exponents in (0, 1] give values in (1, e]: bounds like these are values, not exponents.
        if 0 < p.min < p.max <= 1:
            low, high = math.exp(p.min), math.exp(p.max)
            if p.distribution is D.INV_LOG_UNIFORM:
                low, high = 1 / high, 1 / low
            lines.append(
                f"{p.key_path}: {p.distribution.value} takes base-e exponents as min and max, so "
                f"{p.min:g} and {p.max:g} give values from {low:.4g} to {high:.4g}; for values from "
                f"{p.min:g} to {p.max:g}, use {p.distribution.value}_values"
            )
    return lines
