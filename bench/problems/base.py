from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    name: str
    parameters: Mapping[str, Mapping[str, Any]]  # W&B format, flat names
    objective: Callable[[Mapping[str, Any]], float]  # minimised
    optimum: float | None  # None: regret is measured from the best value any method found

    def sweep(self, method: str) -> dict[str, Any]:
        return {
            "method": method,
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": dict(self.parameters),
        }
