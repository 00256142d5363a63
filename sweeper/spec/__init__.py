"""Sweep files (W&B's format, in full): parsed and checked once into a frozen SweepSpec.

>>> from sweeper.spec import load_sweep_file, sample, describe
"""

from __future__ import annotations

from sweeper.spec.distributions import sample
from sweeper.spec.loader import load_sweep_file, parse_new_sweep
from sweeper.spec.model import (
    DEFAULT_COMMAND,
    Distribution,
    Goal,
    Hyperband,
    Metric,
    Options,
    Parameter,
    SweepSpec,
)
from sweeper.spec.parse import parse_sweep
from sweeper.spec.problems import Problem, SpecError
from sweeper.spec.space import (
    build_config,
    describe,
    flatten_config,
    grid_problems,
    grid_size,
    grid_values,
    space_size,
    space_values,
)
from sweeper.trials import config_key  # one key for configurations, made where records are

__all__ = [
    "DEFAULT_COMMAND",
    "Distribution",
    "Goal",
    "Hyperband",
    "Metric",
    "Options",
    "Parameter",
    "Problem",
    "SpecError",
    "SweepSpec",
    "build_config",
    "config_key",
    "describe",
    "flatten_config",
    "grid_problems",
    "grid_size",
    "grid_values",
    "load_sweep_file",
    "parse_new_sweep",
    "parse_sweep",
    "sample",
    "space_size",
    "space_values",
]
