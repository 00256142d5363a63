"""Rung levels and promotion counts of successive halving."""

from __future__ import annotations

import math

_OPEN_ENDED_RUNGS = 64  # rungs listed when there is no max_iter


def rung_levels(min_iter: int, eta: float, max_iter: int | None) -> list[int]:
    """Iterations ``min_iter * eta**k`` (rounded down) below ``max_iter``, ascending, no repeats."""
    levels: list[int] = []
    exact = float(min_iter)
    for _ in range(_OPEN_ENDED_RUNGS):
        level = math.floor(exact + 1e-9)
        if (max_iter is not None and level >= max_iter) or exact > 1e15:
            break
        if not levels or level > levels[-1]:
            levels.append(level)
        exact *= eta
    return levels


def promotion_count(competitors: int, eta: float) -> int:
    """How many of ``competitors`` trials at a rung go on: the top 1/eta, at least one."""
    return max(1, int(competitors / eta))
