"""The ``parameters:`` section: W&B's type inference, per-distribution keys and checks."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sweeper.spec.fields import INVALID, integer, number, show, to_number
from sweeper.spec.model import Distribution, Parameter
from sweeper.spec.problems import Problem, did_you_mean, join, unknown_key

D = Distribution

# W&B's schema flags names outside ^[A-Za-z_][A-Za-z0-9_.-]*$ but runs them: Hydra overrides
# (+experiment, ~db, model/optimizer) are common. Refused here: what would break a command line or a log.
_BAD_NAME_RE = re.compile(r"[\x00-\x1f\x7f]")

# The keys each distribution takes besides ``distribution`` (W&B's schemas forbid any other).
KEYS: dict[Distribution, tuple[str, ...]] = {
    D.CONSTANT: ("value",),
    D.CATEGORICAL: ("values",),
    D.CATEGORICAL_W_PROBABILITIES: ("values", "probabilities"),
    D.INT_UNIFORM: ("min", "max"),
    D.UNIFORM: ("min", "max"),
    D.Q_UNIFORM: ("min", "max", "q"),
    D.LOG_UNIFORM: ("min", "max"),
    D.LOG_UNIFORM_VALUES: ("min", "max"),
    D.INV_LOG_UNIFORM: ("min", "max"),
    D.INV_LOG_UNIFORM_VALUES: ("min", "max"),
    D.Q_LOG_UNIFORM: ("min", "max", "q"),
    D.Q_LOG_UNIFORM_VALUES: ("min", "max", "q"),
    D.NORMAL: ("mu", "sigma"),
    D.Q_NORMAL: ("mu", "sigma", "q"),
    D.LOG_NORMAL: ("mu", "sigma"),
    D.Q_LOG_NORMAL: ("mu", "sigma", "q"),
    D.BETA: ("a", "b"),
    D.Q_BETA: ("a", "b", "q"),
}
_OPTIONAL = frozenset({"q", "mu", "sigma", "a", "b"})  # these have W&B defaults
_ALL_KEYS = frozenset({"distribution", "parameters"}.union(*KEYS.values()))
_EXPONENT_BOUNDS = frozenset({D.LOG_UNIFORM, D.INV_LOG_UNIFORM, D.Q_LOG_UNIFORM})
_MAX_EXPONENT = 700  # exp(709.8) is the largest float
_VALUES_BOUNDS = frozenset({D.LOG_UNIFORM_VALUES, D.INV_LOG_UNIFORM_VALUES, D.Q_LOG_UNIFORM_VALUES})


def parse_parameters(
    data: Any, key_path: str, prefix: tuple[str, ...], problems: list[Problem]
) -> list[Parameter]:
    """Every leaf parameter under ``data`` (a ``parameters:`` mapping), in file order."""
    if not isinstance(data, Mapping):
        problems.append(
            Problem(key_path, f"expected a mapping of parameter names to settings, got {show(data)}")
        )
        return []
    if not data:
        problems.append(Problem(key_path, "expected at least one parameter"))
        return []
    out: list[Parameter] = []
    for raw_name, body in data.items():
        name = str(raw_name)
        path = join(key_path, name)
        if not isinstance(raw_name, str):
            problems.append(
                Problem(
                    path,
                    f"the name {raw_name!r} is not text (YAML reads bare numbers, booleans and null "
                    "as such): quote it",
                )
            )
        elif not raw_name.strip():
            problems.append(Problem(path, f"expected a parameter name, got {show(raw_name)}"))
        elif _BAD_NAME_RE.search(name):
            problems.append(Problem(path, f"a parameter name may not hold control characters, got {name!r}"))
        out.extend(_parse_one(prefix + (name,), body, path, problems))
    if not prefix:
        _check_unique_names(out, problems)
    return out


def looks_like_a_parameter(body: Any) -> bool:
    """A mapping of a parameter's keys only (``{values: [...]}``, ``{min: 0, max: 1}``), as
    written when a parameter is put beside ``parameters:`` instead of under it."""
    return isinstance(body, Mapping) and bool(body) and all(k in _ALL_KEYS for k in body)


def _check_unique_names(params: list[Parameter], problems: list[Problem]) -> None:
    # A dotted flat name ("opt.lr") and a nested one (opt: {parameters: {lr}}) would share a name.
    seen: dict[str, Parameter] = {}
    for p in params:
        if p.name in seen:
            problems.append(Problem(p.key_path, f"name {p.name!r} is also used by {seen[p.name].key_path}"))
        seen.setdefault(p.name, p)


def _parse_one(ppath: tuple[str, ...], body: Any, path: str, problems: list[Problem]) -> list[Parameter]:
    if not isinstance(body, Mapping):
        problems.append(
            Problem(
                path,
                "expected a mapping such as {value: ...}, {values: [...]} or {min: ..., max: ...}, "
                f"got {show(body)}",
            )
        )
        return []
    keys = [str(k) for k in body]
    strange = [k for k in keys if k not in _ALL_KEYS]
    for k in strange:
        problems.append(Problem(join(path, k), unknown_key(k, _ALL_KEYS)))

    if "distribution" in body:
        dist = _distribution(body["distribution"], join(path, "distribution"), problems)
        inferred = False
    elif "parameters" in body:
        for k in keys:
            if k != "parameters" and k not in strange:
                problems.append(Problem(join(path, k), "not allowed beside nested 'parameters'"))
        return parse_parameters(body["parameters"], join(path, "parameters"), ppath, problems)
    else:
        dist = _infer(body, path, problems, quiet=bool(strange))
        inferred = True
    if dist is None:
        return []

    allowed = KEYS[dist]
    for k in keys:
        if k in _ALL_KEYS and k != "distribution" and k not in allowed:
            if inferred and k == "value" and "values" in body:
                both = "a parameter is one constant (value) or a choice (values), not both"
                problems.append(Problem(join(path, k), both))
                continue
            hint = "; give 'distribution' to choose another" if inferred else ""
            problems.append(
                Problem(join(path, k), f"not a key of {dist} (it takes: {', '.join(allowed)}){hint}")
            )
    missing = [k for k in allowed if k not in body and k not in _OPTIONAL]
    for k in missing:
        problems.append(Problem(join(path, k), f"required for {dist}"))
    if missing:
        return []

    before = len(problems)
    fields = _read_fields(dist, body, path, problems)
    if len(problems) > before:
        return []
    return [Parameter(path=ppath, distribution=dist, **fields)]


def _distribution(value: Any, path: str, problems: list[Problem]) -> Distribution | None:
    try:
        return Distribution(value)
    except ValueError:
        hint = did_you_mean(value, [d.value for d in D]) if isinstance(value, str) else ""
        if not hint:
            hint = f"; expected one of {', '.join(d.value for d in D)}"
        problems.append(Problem(path, f"unknown distribution {show(value)}{hint}"))
        return None


def _infer(
    body: Mapping[str, Any], path: str, problems: list[Problem], *, quiet: bool
) -> Distribution | None:
    """W&B's inference when ``distribution`` is missing: the first of its schemas that fits."""
    if "values" in body:
        return D.CATEGORICAL_W_PROBABILITIES if "probabilities" in body else D.CATEGORICAL
    if "value" in body:
        return D.CONSTANT
    if "min" in body and "max" in body:
        # W&B reads {min: 1, max: 10} as int_uniform and {min: 1, max: 10.0} as uniform.
        both_int = all(isinstance(to_number(body[k]), int) for k in ("min", "max"))
        return D.INT_UNIFORM if both_int else D.UNIFORM
    if quiet:
        return None  # the unknown keys already explain it
    if "min" in body or "max" in body:
        other = "max" if "min" in body else "min"
        problems.append(Problem(join(path, other), "required beside " + ("min" if other == "max" else "max")))
        return None
    given = ", ".join(str(k) for k in body) or "none"
    problems.append(
        Problem(
            path,
            f"cannot infer the distribution from the keys ({given}); "
            "give 'distribution', or use value, values, or min and max",
        )
    )
    return None


def _read_fields(dist: Distribution, body: Mapping[str, Any], path: str, problems: list[Problem]) -> dict:
    out: dict[str, Any] = {}
    if dist is D.CONSTANT:
        out["value"] = body["value"]
        return out
    if "values" in KEYS[dist]:
        values = body["values"]
        if not isinstance(values, list) or not values:
            problems.append(Problem(join(path, "values"), f"expected a non-empty list, got {show(values)}"))
            return out
        out["values"] = tuple(values)
    if "probabilities" in KEYS[dist]:
        probs = _probabilities(
            body["probabilities"], len(body["values"]), join(path, "probabilities"), problems
        )
        out["probabilities"] = probs
    if "min" in KEYS[dist]:
        out.update(_bounds(dist, body, path, problems))
    for key in ("mu", "a", "b", "sigma", "q"):
        if key in KEYS[dist] and key in body:
            out[key] = _parameter_number(key, body[key], join(path, key), problems)
    _check_lattice(out, path, problems)
    return out


def _check_lattice(fields: dict, path: str, problems: list[Problem]) -> None:
    """A q so small against the bounds that value / q overflows cannot be rounded to."""
    q, lo, hi = fields.get("q"), fields.get("min"), fields.get("max")
    if any(v is None or v is INVALID for v in (q, lo, hi)) or q <= 0:
        return
    if not math.isfinite(max(abs(float(lo)), abs(float(hi))) / float(q)):
        problems.append(
            Problem(join(path, "q"), f"q {show(q)} is too small for the bounds {show(lo)}..{show(hi)}")
        )


def _parameter_number(key: str, raw: Any, path: str, problems: list[Problem]) -> Any:
    # Limits as W&B's schema has them, except a and b: Beta(0, b) is no distribution, so > 0.
    strict = key in ("q", "a", "b")
    floor = key in ("q", "a", "b", "sigma")
    what = "a number > 0" if strict else "a number >= 0" if floor else "a number"
    value = number(raw, path, problems, what=what)
    if value is not INVALID and floor and (value <= 0 if strict else value < 0):
        problems.append(Problem(path, f"expected {what}, got {show(raw)}"))
    return value


def _probabilities(raw: Any, n_values: Any, path: str, problems: list[Problem]) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(path, f"expected a non-empty list of numbers, got {show(raw)}"))
        return ()
    probs = []
    for i, item in enumerate(raw):
        p = number(item, f"{path}[{i}]", problems, what="a number >= 0")
        if p is not INVALID and p < 0:
            problems.append(Problem(f"{path}[{i}]", f"expected a number >= 0, got {show(item)}"))
        probs.append(p)
    if isinstance(n_values, int) and len(raw) != n_values:
        problems.append(Problem(path, f"expected {n_values} probabilities, one per value, got {len(raw)}"))
    if INVALID not in probs and not math.isclose(sum(probs), 1.0, rel_tol=1e-5, abs_tol=1e-8):
        problems.append(Problem(path, f"expected numbers summing to 1, got {show(raw)} (sum {sum(probs):g})"))
    return tuple(float(p) for p in probs if p is not INVALID)


def _bounds(dist: Distribution, body: Mapping[str, Any], path: str, problems: list[Problem]) -> dict:
    read = integer if dist is D.INT_UNIFORM else number
    what = "an integer" if dist is D.INT_UNIFORM else "a number"
    lo = read(body["min"], join(path, "min"), problems, what=what)
    hi = read(body["max"], join(path, "max"), problems, what=what)
    if INVALID in (lo, hi):
        return {}
    if dist in _VALUES_BOUNDS and lo <= 0:
        problems.append(Problem(join(path, "min"), f"{dist} needs min > 0, got {show(body['min'])}"))
    elif lo >= hi:
        problems.append(Problem(path, f"min must be less than max, got min {show(lo)}, max {show(hi)}"))
    elif not math.isfinite(float(hi) - float(lo)):
        # Sampling would give infinities that no script and no JSON can take.
        problems.append(Problem(path, f"the range min {show(lo)} to max {show(hi)} is too wide to sample"))
    elif dist in _EXPONENT_BOUNDS and max(abs(lo), abs(hi)) > _MAX_EXPONENT:
        # The bounds are exponents; values such as 1000 are almost always meant as the values themselves.
        key = "max" if abs(hi) >= abs(lo) else "min"
        problems.append(
            Problem(
                join(path, key),
                f"{dist} bounds are base-e exponents and exp({show(body[key])}) is out of range; "
                f"did you mean {dist}_values?",
            )
        )
    return {"min": lo, "max": hi}
