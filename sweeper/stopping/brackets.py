"""Which Hyperband bracket a trial belongs to, from its number alone (so it survives restarts).

Bracket ``b`` (0 .. s_max) starts at ``min * eta**b`` and runs to ``max``. Brackets are handed
out in a fixed repeating order whose counts follow Hyperband's ``n_b = ceil((s_max + 1) /
(s_max - b + 1) * eta**(s_max - b))``, spread evenly (smooth weighted round robin), so every
bracket spends about the same total resource, as in Li et al.'s Hyperband. ``resource.brackets``
keeps the first (most aggressive) ones only; with 1 every trial is in bracket 0: ASHA.
"""

from __future__ import annotations

import math

from sweeper.spec.model import Resource
from sweeper.stopping.rungs import rung_levels


def bracket_count(resource: Resource) -> int:
    """s_max + 1: how many brackets fit between min and max."""
    s_max = math.floor(math.log(resource.max / resource.min) / math.log(resource.eta) + 1e-9)
    return s_max + 1


class BracketSchedule:
    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        fit = bracket_count(resource)
        self.count = min(fit, resource.brackets or fit)
        s_max = fit - 1
        eta = resource.eta
        self.weights = [
            math.ceil((s_max + 1) / (s_max - b + 1) * eta ** (s_max - b) - 1e-9) for b in range(self.count)
        ]
        self.order = _spread(self.weights)

    def bracket_of(self, number: int) -> int:
        """The bracket of trial ``number`` (1, 2, 3, ...)."""
        return self.order[(number - 1) % len(self.order)]

    def rungs(self, bracket: int) -> list[int]:
        """Iterations at which a trial of ``bracket`` is checked; it runs to ``max`` after the last."""
        r = self.resource
        return rung_levels(math.floor(r.min * r.eta**bracket + 1e-9), r.eta, r.max)


def _spread(weights: list[int]) -> list[int]:
    """Smooth weighted round robin: each index appears weights[i] times, interleaved."""
    total = sum(weights)
    current = [0] * len(weights)
    order = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order
