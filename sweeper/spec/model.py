"""The frozen, typed form of a sweep file. Built once by :func:`sweeper.spec.parse_sweep`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Distribution(enum.StrEnum):
    CONSTANT = "constant"
    CATEGORICAL = "categorical"
    CATEGORICAL_W_PROBABILITIES = "categorical_w_probabilities"
    INT_UNIFORM = "int_uniform"
    UNIFORM = "uniform"
    Q_UNIFORM = "q_uniform"
    LOG_UNIFORM = "log_uniform"  # min/max are base-e exponents
    LOG_UNIFORM_VALUES = "log_uniform_values"
    INV_LOG_UNIFORM = "inv_log_uniform"  # min/max are base-e exponents
    INV_LOG_UNIFORM_VALUES = "inv_log_uniform_values"
    Q_LOG_UNIFORM = "q_log_uniform"  # min/max are base-e exponents
    Q_LOG_UNIFORM_VALUES = "q_log_uniform_values"
    NORMAL = "normal"
    Q_NORMAL = "q_normal"
    LOG_NORMAL = "log_normal"
    Q_LOG_NORMAL = "q_log_normal"
    BETA = "beta"
    Q_BETA = "q_beta"


class Goal(enum.StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


@dataclass(frozen=True)
class Parameter:
    """One leaf of the search space. Nested parameters are flattened; ``path`` keeps the nesting.

    Only the fields that belong to ``distribution`` are meaningful; the others keep their
    defaults (which are W&B's defaults: mu=0, sigma=1, a=b=1, q=1.0).
    """

    path: tuple[str, ...]
    distribution: Distribution
    value: Any = None  # constant
    values: tuple[Any, ...] = ()  # categorical, categorical_w_probabilities
    probabilities: tuple[float, ...] = ()
    min: float | int | None = None
    max: float | int | None = None
    mu: float = 0.0
    sigma: float = 1.0
    a: float = 1.0
    b: float = 1.0
    q: float | int = 1.0  # an int q gives int results, as in W&B

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def key_path(self) -> str:
        """Where the parameter stands in the sweep file, for messages: ``parameters.opt.parameters.lr``."""
        return "parameters." + ".parameters.".join(self.path)


@dataclass(frozen=True)
class Metric:
    name: str
    goal: Goal = Goal.MINIMIZE
    target: float | None = None
    impute: str = "worst"  # latest | best | worst
    impute_while_running: str = "false"  # latest | best | worst | false

    def is_better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` for this goal."""
        return a < b if self.goal is Goal.MINIMIZE else a > b

    def reached_target(self, value: float) -> bool:
        if self.target is None:
            return False
        return value <= self.target if self.goal is Goal.MINIMIZE else value >= self.target


@dataclass(frozen=True)
class Hyperband:
    """``early_terminate: {type: hyperband, ...}`` exactly as W&B defines it."""

    min_iter: int | None = None
    max_iter: int | None = None
    s: int | None = None  # W&B counts bands with range(s), so an int
    eta: float = 3.0
    strict: bool = True

    type: ClassVar[str] = "hyperband"


@dataclass(frozen=True)
class Asha:
    """``early_terminate: {type: asha, ...}``: asynchronous successive halving (our own type).

    Rungs stand at iterations ``min_iter * eta**k`` below ``max_iter`` (no limit when None); at each,
    a trial goes on only when it is in the top ``1/eta`` of the trials that reached the rung before it.
    """

    min_iter: int = 1
    eta: float = 3.0
    max_iter: int | None = None

    type: ClassVar[str] = "asha"


@dataclass(frozen=True)
class Resource:
    """``sweeper: {resource: ...}``: the integer parameter that methods hyperband and bohb allocate.

    Every trial's config sets ``name`` to ``max``; the method stops trials at rungs
    ``min * eta**k`` counted in logged values of the metric (one per epoch, say). ``brackets``
    keeps only the most aggressive brackets: 1 is asynchronous successive halving (ASHA), which
    spends least when early values rank configurations well; the default, every bracket that
    fits, is Hyperband's hedge for when they do not.
    """

    name: str  # the parameter's name, dotted when nested
    min: int = 1
    max: int | None = None  # None: the value of the (constant) parameter
    eta: float = 3.0
    brackets: int | None = None  # None: every bracket between min and max


DEFAULT_CHECKPOINTS = ".sweeper/checkpoints"


@dataclass(frozen=True)
class Pbt:
    """``sweeper: {pbt: ...}``: population-based training (``method: pbt``).

    ``population`` members run as trials. Each time a member's trial has logged
    ``perturbation_interval`` more values of the metric, it is ranked against the latest value of
    every member; in the bottom ``quantile`` it is stopped, and its slot restarts from the checkpoint
    of a top-``quantile`` member with that member's configuration explored: each value resampled
    with ``resample_probability``, otherwise multiplied by one of ``perturbation_factors``
    (continuous) or moved to a neighbouring value (categorical). Checkpoints live under
    ``checkpoints``: a folder (relative to each agent's working folder), an fsspec URL, an
    ``mlflow-artifacts://`` URL, or ``mlflow`` (resolved at parsing to the artifact store of the
    server in ``integrations.mlflow``). ``keep_checkpoints: needed`` (the default) has agents remove
    the checkpoints of replaced members once nothing can restore from them; ``all`` keeps every one.
    """

    population: int = 8
    perturbation_interval: int = 4
    quantile: float = 0.25
    resample_probability: float = 0.25
    perturbation_factors: tuple[float, float] = (0.8, 1.2)
    checkpoints: str = DEFAULT_CHECKPOINTS
    keep_checkpoints: str = "needed"  # or "all"


@dataclass(frozen=True)
class Options:
    """Our own additions, under the ``sweeper:`` key of a sweep file. W&B keys keep their meaning."""

    seed: int | None = None  # None: a random seed is drawn and stored with the sweep
    max_retries: int = 1  # how often a failed or lost configuration is run again
    # Random search in a finite space never repeats a config. None: so unless a parameter gives
    # probabilities, whose weights only show when values repeat (W&B's random search repeats).
    sample_without_replacement: bool | None = None
    resource: Resource | None = None  # methods hyperband and bohb: the budget each trial gets
    pbt: Pbt | None = None  # method pbt: the population and how it exploits and explores
    # Seconds a trial may run before it is stopped (its results so far count), and seconds it may
    # go without logging or printing anything before it is taken for hung and failed. None: no limit.
    trial_timeout: float | None = None
    stall_timeout: float | None = None


DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")


@dataclass(frozen=True)
class SweepSpec:
    method: str
    parameters: tuple[Parameter, ...]
    metric: Metric | None = None
    early_terminate: Hyperband | Asha | None = None
    command: tuple[str, ...] = DEFAULT_COMMAND
    program: str | None = None
    run_cap: int | None = None
    name: str | None = None
    description: str | None = None
    project: str | None = None
    entity: str | None = None
    options: Options = field(default_factory=Options)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the file as loaded

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)
