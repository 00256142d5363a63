"""The search space as a whole: finite grids, the config a script sees, deduplication keys."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sweeper.spec.model import Distribution, Parameter, SweepSpec
from sweeper.trials import config_key

D = Distribution

GRID_DISTRIBUTIONS = frozenset({D.CONSTANT, D.CATEGORICAL, D.INT_UNIFORM, D.Q_UNIFORM})


def space_values(param: Parameter) -> tuple[Any, ...] | None:
    """Every value sampling can give ``param``, or None when that set is not finite (or not listed here).

    For ``q_uniform`` these are the multiples ``k*q`` for ``k`` from ``round(min/q)`` to
    ``round(max/q)``: exactly what the sampler can return (``round(x/q)*q`` for ``x`` in
    ``[min, max]``), so ``max`` is included when it is on the lattice. Grid search lists
    other values: see :func:`grid_values`.

    ``categorical_w_probabilities`` gives its values, so random search knows the space is
    finite; grid search still refuses it (see :func:`grid_problems`).
    """
    d = param.distribution
    if d is D.CONSTANT:
        return (param.value,)
    if d in (D.CATEGORICAL, D.CATEGORICAL_W_PROBABILITIES):
        return param.values
    if d is D.INT_UNIFORM:
        return tuple(range(param.min, param.max + 1))
    if d is D.Q_UNIFORM:
        q = param.q
        ks = range(round(param.min / q), round(param.max / q) + 1)
        return tuple(k * q for k in ks) if isinstance(q, int) else tuple(float(k * q) for k in ks)
    return None


def grid_values(param: Parameter) -> tuple[Any, ...] | None:
    """Every value grid search gives ``param``, in order, as W&B's grid does; None when not finite.

    ``q_uniform`` takes ``numpy.arange(min, max, q)``, as W&B's grid does: ``min``, ``min + q``, ...
    below ``max`` (so ``max`` is left out, and ``{min: 1, max: 10, q: 3}`` gives 1, 4, 7); ints
    when ``min``, ``max`` and ``q`` are all ints, else floats, with numpy's float rounding (so
    ``{min: 1, max: 1.3, q: 0.1}`` ends in ``1.3000000000000003``). Every other distribution
    gives its :func:`space_values`.
    """
    if param.distribution is D.Q_UNIFORM:
        return arange(param.min, param.max, param.q)
    values = space_values(param)
    return None if values is None else distinct(values)


def distinct(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``values`` with those that make the same configuration (``1`` and ``1.0``, ``3e6`` and
    ``3000000``) once each, where the first stands and as the last is written: W&B's grid keys its
    values by such a hash in a dict, so ``[1, 1.0, 2]`` runs ``1.0`` and ``2``."""
    by_key: dict[str, Any] = {}
    for value in values:
        by_key[config_key({"": value})] = value
    return tuple(by_key.values())


def arange(start: float, stop: float, step: float) -> tuple[float, ...] | tuple[int, ...]:
    """``tuple(numpy.arange(start, stop, step).tolist())`` for ``step > 0``, value for value and type
    for type, without numpy (the coordinator does not need it)."""
    n = _arange_len(start, stop, step)
    if all(isinstance(v, int) for v in (start, stop, step)):
        return tuple(start + i * step for i in range(n))
    # numpy writes start and start + step, then fills on with start + i * (second - first).
    first, second = float(start), float(start + step)
    delta = second - first
    return ((first, second) + tuple(first + i * delta for i in range(2, n)))[:n]


def _arange_len(start: float, stop: float, step: float) -> int:
    # numpy's count: ceil((stop - start) / step), and 1 when that quotient underflows to 0;
    # too many to count (an overflow) stands for more than any grid lists.
    if stop <= start:
        return 0
    try:
        steps = (stop - start) / step
    except OverflowError:
        return sys.maxsize
    return max(1, math.ceil(steps)) if math.isfinite(steps) else sys.maxsize


def grid_size(spec: SweepSpec) -> int | None:
    """How many configurations grid search lists for ``spec``, or None when that is not finite."""
    return _size(spec, _grid_len)


def space_size(spec: SweepSpec) -> int | None:
    """How many distinct configurations sampling ``spec`` can give, or None when not finite."""
    return _size(spec, _space_len)


def _size(spec: SweepSpec, length: Callable[[Parameter], int | None]) -> int | None:
    size = 1
    for p in spec.parameters:
        n = length(p)
        if n is None:
            return None
        size *= n
    return size


# Counted, not listed: an int_uniform over 0..10**9 is finite but must not be built.
def _grid_len(p: Parameter) -> int | None:
    if p.distribution is D.Q_UNIFORM:
        return _arange_len(p.min, p.max, p.q)
    return _space_len(p)


def _space_len(p: Parameter) -> int | None:
    if p.distribution is D.INT_UNIFORM:
        return p.max - p.min + 1
    if p.distribution is D.Q_UNIFORM:
        return round(p.max / p.q) - round(p.min / p.q) + 1
    values = space_values(p)
    return None if values is None else len(distinct(values))  # configurations, not spellings


# Grid search lists its combinations; past this many a sampled search is the right tool.
MAX_GRID_SIZE = 1_000_000


def grid_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """Why ``spec`` cannot be searched by grid, as (key path, message); W&B's rule plus a size cap."""
    problems = []
    size = grid_size(spec)
    if size is not None and size > MAX_GRID_SIZE:
        problems.append(
            (
                "parameters",
                f"the grid has {size:,} combinations, more than the {MAX_GRID_SIZE:,} grid search lists; "
                "use method: random or bayes for a space this large",
            )
        )
    for p in spec.parameters:
        if p.distribution is D.CATEGORICAL_W_PROBABILITIES:
            problems.append(
                (join_key(p, "probabilities"), "grid search does not allow probabilities; drop them")
            )
        elif p.distribution not in GRID_DISTRIBUTIONS:
            problems.append(
                (
                    p.key_path,
                    f"grid search needs a finite set of values; {p.distribution} is continuous "
                    "(use value, values, int_uniform or q_uniform)",
                )
            )
    return problems


def join_key(p: Parameter, key: str) -> str:
    return f"{p.key_path}.{key}"


def build_config(spec: SweepSpec, values: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """The nested config a training script sees, from leaf values keyed by ``Parameter.path``.

    Constants may be left out of ``values``; any other parameter must be there.
    """
    known = {p.path for p in spec.parameters}
    extra = [".".join(path) for path in values if path not in known]
    if extra:
        raise ValueError(f"not parameters of this sweep: {', '.join(extra)}")
    config: dict[str, Any] = {}
    for p in spec.parameters:
        if p.path in values:
            value = values[p.path]
        elif p.distribution is D.CONSTANT:
            value = p.value
        else:
            raise KeyError(f"no value for parameter {p.name!r}")
        node = config
        for key in p.path[:-1]:
            node = node.setdefault(key, {})
        node[p.path[-1]] = value
    return config


def flatten_config(
    config: Mapping[str, Any], spec: SweepSpec | Iterable[Parameter] | None = None
) -> dict[tuple[str, ...], Any]:
    """The inverse of :func:`build_config`: leaf paths to values.

    Without ``spec`` every non-empty mapping is descended into. With it (or its parameters), only
    the nesting of the spec's parameters is, so a parameter whose value is itself a dict (W&B's
    ``values: [{lr: 1}, {lr: 2}]``) stays one leaf.
    """
    parameters = spec.parameters if isinstance(spec, SweepSpec) else spec
    prefixes = None if parameters is None else {p.path[:i] for p in parameters for i in range(1, len(p.path))}
    out: dict[tuple[str, ...], Any] = {}

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            path = prefix + (key,)
            descend = isinstance(value, Mapping) and value and (prefixes is None or path in prefixes)
            if descend:
                walk(value, path)
            else:
                out[path] = value

    walk(config, ())
    return out


def describe(spec: SweepSpec) -> str:
    """One line about a spec, e.g. ``grid, 3 parameters (lr, bs, opt.name), 12 combinations,
    metric val_acc (maximize)``."""
    n = len(spec.parameters)
    parts = [
        spec.method,
        f"{n} parameter{'s' if n != 1 else ''} ({', '.join(p.name for p in spec.parameters)})",
    ]
    size = grid_size(spec) if spec.method == "grid" else space_size(spec)
    parts.append(f"{size} combination{'s' if size != 1 else ''}" if size is not None else "continuous space")
    if spec.metric is not None:
        parts.append(f"metric {spec.metric.name} ({spec.metric.goal})")
    else:
        parts.append("no metric")
    if spec.early_terminate is not None:
        rule = spec.early_terminate
        if rule.type == "hyperband" and rule.max_iter is not None:  # W&B's rule: max_iter wins
            when = f"max_iter {rule.max_iter}, s {getattr(rule, 's', None)}"
        elif rule.max_iter is not None:
            when = f"min_iter {rule.min_iter}, max_iter {rule.max_iter}"
        else:
            when = f"min_iter {rule.min_iter}"
        parts.append(f"{rule.type} early termination ({when}, eta {rule.eta:g})")
    if spec.run_cap is not None:
        parts.append(f"run_cap {spec.run_cap}")
    return ", ".join(parts)
