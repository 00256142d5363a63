"""The small top-level sections of a sweep file: metric, early_terminate, command, sweeper."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sweeper.spec.fields import INVALID, boolean, choice, duration, integer, number, show, string
from sweeper.spec.model import Asha, Goal, Hyperband, Metric, Options, Pbt, Resource
from sweeper.spec.problems import Problem, closest, join, unknown_key

MACROS = (
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_no_equals",
    "args_json",
    "args_json_file",
    "args_append_hydra",
    "args_override_hydra",
)
_MACRO_RE = re.compile(r"\$\{([^}]*)\}")
_ENVVAR_RE = re.compile(r"envvar:[A-Za-z_][A-Za-z0-9_]*")
_ALLOWED_MACROS = ", ".join([f"${{{m}}}" for m in MACROS] + ["${envvar:NAME}"])

IMPUTE = ("latest", "best", "worst")


def mapping(raw: Any, path: str, keys: tuple[str, ...], problems: list[Problem], what: str) -> bool:
    """True when ``raw`` is a mapping; records a Problem for it or for each key not in ``keys``."""
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, f"expected a mapping {what}, got {show(raw)}"))
        return False
    for key in raw:
        if key not in keys:
            problems.append(Problem(join(path, str(key)), unknown_key(str(key), keys)))
    return True


def parse_metric(raw: Any, problems: list[Problem]) -> Metric | None:
    keys = ("name", "goal", "target", "impute", "impute_while_running")
    if not mapping(raw, "metric", keys, problems, "such as {name: val_loss, goal: minimize}"):
        return None
    before = len(problems)
    if "name" not in raw:
        problems.append(Problem("metric.name", "required"))
    else:
        name = string(raw["name"], "metric.name", problems)
        if name is not INVALID and not name.strip():
            problems.append(Problem("metric.name", "expected a non-empty string, got ''"))
    goal = choice(raw.get("goal", "minimize"), tuple(g.value for g in Goal), "metric.goal", problems)
    target = number(raw["target"], "metric.target", problems) if raw.get("target") is not None else None
    impute = choice(raw.get("impute", "worst"), IMPUTE, "metric.impute", problems)
    running = raw.get("impute_while_running", "false")
    if running is False:  # YAML reads the W&B value `false` as a bool
        running = "false"
    running = choice(running, IMPUTE + ("false",), "metric.impute_while_running", problems)
    if len(problems) > before:
        return None
    return Metric(
        name=raw["name"], goal=Goal(goal), target=target, impute=impute, impute_while_running=running
    )


EARLY_TERMINATE_KEYS = {
    "hyperband": ("type", "min_iter", "max_iter", "s", "eta", "strict"),
    "asha": ("type", "min_iter", "max_iter", "eta"),
}


def parse_early_terminate(raw: Any, problems: list[Problem]) -> Hyperband | Asha | None:
    path = "early_terminate"
    types = tuple(EARLY_TERMINATE_KEYS)
    if not isinstance(raw, Mapping):
        problems.append(
            Problem(path, f"expected a mapping such as {{type: hyperband, min_iter: 3}}, got {show(raw)}")
        )
        return None
    before = len(problems)
    if "type" not in raw:
        problems.append(Problem("early_terminate.type", f"required; expected {' or '.join(types)}"))
        kind = INVALID
    else:
        kind = choice(raw["type"], types, "early_terminate.type", problems)
    # Keys are checked against the type's own keys once the type is known, against all otherwise.
    allowed = EARLY_TERMINATE_KEYS[kind] if kind is not INVALID else EARLY_TERMINATE_KEYS["hyperband"]
    for key in raw:
        if key not in allowed:
            problems.append(Problem(join(path, str(key)), _unknown_stopping_key(str(key), kind, allowed)))
    fields: dict[str, Any] = {}
    for key in ("min_iter", "max_iter"):
        if key in raw:
            fields[key] = _at_least(integer, raw[key], f"{path}.{key}", problems, 1, "an integer >= 1")
    if "eta" in raw:
        fields["eta"] = _above(raw["eta"], "early_terminate.eta", problems, 1)
    if kind == "asha":
        return _asha(fields, problems, before)
    if "s" in raw:
        fields["s"] = _at_least(integer, raw["s"], "early_terminate.s", problems, 1, "an integer >= 1")
    if "strict" in raw:
        fields["strict"] = boolean(raw["strict"], "early_terminate.strict", problems)
    # W&B uses max_iter and s whenever max_iter is given, min_iter otherwise.
    if "max_iter" in raw and "s" not in raw:
        problems.append(Problem("early_terminate.s", "required with max_iter (or give min_iter alone)"))
    elif "s" in raw and "max_iter" not in raw and "min_iter" not in raw:
        problems.append(Problem("early_terminate.max_iter", "required with s (or give min_iter instead)"))
    elif "min_iter" not in raw and "max_iter" not in raw:
        problems.append(Problem(path, "hyperband needs min_iter, or max_iter and s"))
    if len(problems) > before:
        return None
    if "max_iter" in fields and fields["max_iter"] / fields.get("eta", 3.0) < 1:
        eta = fields.get("eta", 3.0)
        problems.append(
            Problem(
                "early_terminate.max_iter",
                f"max_iter {fields['max_iter']} / eta {eta:g} is below 1, so hyperband has no band "
                f"to stop at; raise max_iter to at least {eta:g} or lower eta",
            )
        )
        return None
    return Hyperband(**fields)


def _asha(fields: dict[str, Any], problems: list[Problem], before: int) -> Asha | None:
    if len(problems) > before:
        return None
    low, high = fields.get("min_iter", 1), fields.get("max_iter")
    if high is not None and high <= low:
        problems.append(
            Problem(
                "early_terminate.max_iter",
                f"expected an integer > min_iter ({low}), got {high}: asha needs a rung below max_iter",
            )
        )
        return None
    return Asha(**fields)


def _unknown_stopping_key(key: str, kind: Any, allowed: tuple[str, ...]) -> str:
    if kind is not INVALID and any(key in keys for keys in EARLY_TERMINATE_KEYS.values()):
        return f"not a key of type {kind}; expected one of {', '.join(sorted(allowed))}"
    return unknown_key(key, allowed)


RESOURCE_KEYS = ("name", "min", "max", "eta", "brackets")


def parse_resource(raw: Any, problems: list[Problem]) -> Resource | None:
    """``sweeper.resource``: a parameter name, or {name, min, max, eta}. The parameter itself is
    checked against ``parameters`` by the methods that use it."""
    path = "sweeper.resource"
    if isinstance(raw, str):
        raw = {"name": raw}
    what = "such as epochs or {name: epochs, min: 1, max: 81, eta: 3, brackets: 1}"
    if not mapping(raw, path, RESOURCE_KEYS, problems, what):
        return None
    before = len(problems)
    fields: dict[str, Any] = {}
    if "name" not in raw:
        problems.append(Problem(f"{path}.name", "required: the integer parameter to allocate, e.g. epochs"))
    else:
        name = string(raw["name"], f"{path}.name", problems)
        if name is not INVALID and not name.strip():
            problems.append(Problem(f"{path}.name", "expected a parameter name, got ''"))
        fields["name"] = name
    for key in ("min", "max", "brackets"):
        if key in raw:
            fields[key] = _at_least(integer, raw[key], f"{path}.{key}", problems, 1, "an integer >= 1")
    if "eta" in raw:
        fields["eta"] = _above(raw["eta"], f"{path}.eta", problems, 1)
    if len(problems) > before:
        return None
    resource = Resource(**fields)
    if resource.max is not None and resource.max < resource.min * resource.eta:
        problems.append(
            Problem(
                path,
                f"max ({resource.max}) must be at least min * eta ({resource.min} * {resource.eta:g}) "
                "so there is a rung to stop at",
            )
        )
        return None
    return resource


def _at_least(read: Any, raw: Any, path: str, problems: list[Problem], low: int, what: str) -> Any:
    value = read(raw, path, problems, what=what)
    if value is not INVALID and value < low:
        problems.append(Problem(path, f"expected {what}, got {show(raw)}"))
    return value


def _above(raw: Any, path: str, problems: list[Problem], low: float) -> Any:
    what = f"a number > {low}"
    value = number(raw, path, problems, what=what)
    if value is not INVALID and value <= low:
        problems.append(Problem(path, f"expected {what}, got {show(raw)}"))
    return value


PBT_KEYS = (
    "population",
    "perturbation_interval",
    "quantile",
    "resample_probability",
    "perturbation_factors",
    "checkpoints",
    "keep_checkpoints",
)
KEEP_CHECKPOINTS = ("needed", "all")


def parse_pbt(raw: Any, problems: list[Problem]) -> Pbt | None:
    """``sweeper.pbt``: every key optional; ``{}`` or ``true`` takes the defaults."""
    path = "sweeper.pbt"
    if raw is True or raw is None:
        raw = {}
    what = "such as {population: 8, perturbation_interval: 4, quantile: 0.25}"
    if not mapping(raw, path, PBT_KEYS, problems, what):
        return None
    before = len(problems)
    fields: dict[str, Any] = {}
    if "population" in raw:
        fields["population"] = _at_least(
            integer, raw["population"], f"{path}.population", problems, 2, "an integer >= 2"
        )
    if "perturbation_interval" in raw:
        key = f"{path}.perturbation_interval"
        fields["perturbation_interval"] = _at_least(
            integer, raw["perturbation_interval"], key, problems, 1, "an integer >= 1"
        )
    if "quantile" in raw:
        fields["quantile"] = _within(raw["quantile"], f"{path}.quantile", problems, 0.0, 0.5, "0 < q <= 0.5")
    if "resample_probability" in raw:
        key = f"{path}.resample_probability"
        fields["resample_probability"] = _within(raw["resample_probability"], key, problems, 0.0, 1.0, "")
    if "perturbation_factors" in raw:
        fields["perturbation_factors"] = _factors(raw["perturbation_factors"], problems)
    if "checkpoints" in raw:
        fields["checkpoints"] = _checkpoints(raw["checkpoints"], f"{path}.checkpoints", problems)
    if "keep_checkpoints" in raw:
        key = f"{path}.keep_checkpoints"
        fields["keep_checkpoints"] = choice(raw["keep_checkpoints"], KEEP_CHECKPOINTS, key, problems)
    if len(problems) > before:
        return None
    return Pbt(**fields)


def _within(raw: Any, path: str, problems: list[Problem], low: float, high: float, what: str) -> Any:
    """A number in [low, high]; with ``what`` (an open lower end) in (low, high]."""
    expected = f"a number with {what}" if what else f"a number from {low:g} to {high:g}"
    value = number(raw, path, problems, what=expected)
    if value is INVALID:
        return value
    too_low = value <= low if what else value < low
    if too_low or value > high:
        problems.append(Problem(path, f"expected {expected}, got {show(raw)}"))
    return value


def _factors(raw: Any, problems: list[Problem]) -> Any:
    path = "sweeper.pbt.perturbation_factors"
    what = "two numbers > 0, one below 1 and one above, such as [0.8, 1.2]"
    if not isinstance(raw, list) or len(raw) != 2:
        problems.append(Problem(path, f"expected {what}, got {show(raw)}"))
        return INVALID
    values = [number(item, f"{path}[{i}]", problems, what="a number > 0") for i, item in enumerate(raw)]
    if INVALID in values:
        return INVALID
    low, high = sorted(values)
    if not 0 < low < 1 < high:
        problems.append(Problem(path, f"expected {what}, got {show(raw)}"))
        return INVALID
    return (float(low), float(high))


def _checkpoints(raw: Any, path: str, problems: list[Problem]) -> Any:
    value = string(raw, path, problems)
    if value is INVALID:
        return value
    scheme, sep, rest = value.strip().partition("://")
    if not value.strip():
        problems.append(Problem(path, "expected a folder or a URL, got ''"))
    elif sep and (not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) or not rest.strip("/")):
        problems.append(Problem(path, f"expected a URL such as s3://bucket/checkpoints, got {show(raw)}"))
    return value.strip()


def checkpoint_scheme_problem(raw: Any) -> Problem | None:
    """Why fsspec here cannot open the URL PBT's checkpoints go to (every exploit would start from
    scratch), in a sweep's unchecked mapping. Asked of a sweep as it is made, not of stored sweeps:
    the machine that reads one back may lack a plugin that the agents have."""
    options = raw.get("sweeper") if isinstance(raw, Mapping) else None
    pbt = options.get("pbt") if isinstance(options, Mapping) else None
    location = pbt.get("checkpoints") if isinstance(pbt, Mapping) else None
    if not isinstance(location, str):
        return None
    scheme, sep, _ = location.strip().partition("://")
    if not sep or (unknown := _unknown_scheme(scheme)) is None:
        return None
    return Problem("sweeper.pbt.checkpoints", unknown)


def _unknown_scheme(scheme: str) -> str | None:
    if scheme.lower().startswith("mlflow"):
        return None
    try:
        import fsspec
    except ImportError:  # agents may have it: they say so when they cannot open the URL
        return None
    if scheme.lower() in fsspec.available_protocols():
        return None
    return f"no checkpoint store for {scheme}:// URLs (fsspec knows s3, gs, az, file, ... ); or use a folder"


def parse_options(raw: Any, problems: list[Problem]) -> Options:
    keys = (
        "seed",
        "max_retries",
        "sample_without_replacement",
        "resource",
        "pbt",
        "trial_timeout",
        "stall_timeout",
    )
    if not mapping(raw, "sweeper", keys, problems, "of sweeper options such as {seed: 0}"):
        return Options()
    fields: dict[str, Any] = {}
    if "seed" in raw and raw["seed"] is not None:
        fields["seed"] = integer(raw["seed"], "sweeper.seed", problems)
    if "max_retries" in raw:
        what = "an integer >= 0"
        fields["max_retries"] = _at_least(
            integer, raw["max_retries"], "sweeper.max_retries", problems, 0, what
        )
    if "sample_without_replacement" in raw:
        value = boolean(raw["sample_without_replacement"], "sweeper.sample_without_replacement", problems)
        fields["sample_without_replacement"] = value
    if "resource" in raw:
        fields["resource"] = parse_resource(raw["resource"], problems) or INVALID
    if "pbt" in raw:
        fields["pbt"] = parse_pbt(raw["pbt"], problems) or INVALID
    for key in ("trial_timeout", "stall_timeout"):
        if key in raw and raw[key] is not None:
            fields[key] = duration(raw[key], f"sweeper.{key}", problems)
    if INVALID in fields.values():
        return Options()
    return Options(**fields)


def parse_command(raw: Any, problems: list[Problem]) -> tuple[str, ...] | None:
    """The command as strings (numbers and booleans become strings, as W&B's agent makes them:
    ``str(value)``). Macros are checked, not expanded."""
    if not isinstance(raw, list) or not raw:
        problems.append(
            Problem(
                "command",
                f"expected a non-empty list such as [${{env}}, python, ${{program}}, ${{args}}], "
                f"got {show(raw)}",
            )
        )
        return None
    out = []
    before = len(problems)
    for i, item in enumerate(raw):
        path = f"command[{i}]"
        if isinstance(item, int | float):  # bool is an int: True -> "True"
            item = str(item)
        if not isinstance(item, str):
            problems.append(Problem(path, f"expected a string, got {show(item)}"))
            continue
        _check_macros(item, path, problems)
        out.append(item)
    return tuple(out) if len(problems) == before else None


def _one_edit_apart(a: str, b: str) -> bool:
    """``a`` is ``b`` with one character added, dropped or changed: a typo (``${progam}``)."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _check_macros(chunk: str, path: str, problems: list[Problem]) -> None:
    for match in _MACRO_RE.finditer(chunk):
        inner = match.group(1)
        if _ENVVAR_RE.fullmatch(inner):
            continue  # ${envvar:NAME} may stand anywhere in a chunk
        if inner in MACROS:
            if chunk != match.group(0):
                problems.append(
                    Problem(path, f"{match.group(0)} must be a whole item of the list, got {chunk!r}")
                )
            continue
        if inner.startswith("envvar:"):
            problems.append(Problem(path, f"${{envvar:NAME}} needs a variable name, got {match.group(0)!r}"))
            continue
        if chunk != match.group(0) and not any(_one_edit_apart(inner, macro) for macro in MACROS):
            continue  # passed on as written, as W&B's agent does: `bash -c "cd ${HOME} && ${ENV}"`
        near = closest(inner, MACROS)
        hint = f"; did you mean ${{{near}}}?" if near else ""
        problems.append(Problem(path, f"unknown macro {match.group(0)}{hint} (allowed: {_ALLOWED_MACROS})"))
