"""``parse_sweep``: a loaded sweep file (a mapping) to a frozen SweepSpec, checked once, here."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from sweeper.spec.fields import INVALID, choice, integer, show, string
from sweeper.spec.integrations import MLFLOW_CHECKPOINTS, check_integrations, mlflow_checkpoint_root
from sweeper.spec.model import DEFAULT_COMMAND, Options, Pbt, SweepSpec
from sweeper.spec.parameters import looks_like_a_parameter, parse_parameters
from sweeper.spec.problems import Problem, SpecError, closest, join, unknown_key
from sweeper.spec.sections import mapping, parse_command, parse_early_terminate, parse_metric, parse_options

_STRINGS = ("program", "name", "description", "project", "entity", "apiVersion", "job", "image_uri")
WANDB_KEYS = (
    "method",
    "parameters",
    "metric",
    "early_terminate",
    "command",
    "run_cap",
    "controller",
    "kind",
) + _STRINGS
# Valid in W&B, not run by this version: refused with a message that says so.
UNSUPPORTED_KEYS = {
    "metrics": "multi-objective 'metrics' is a W&B key this version does not run yet; give a single 'metric'",
    "scheduler": "'scheduler' is a W&B key this version does not run; agents run trials here",
}
OWN_KEYS = ("sweeper", "integrations")  # reserved for sweeper; never change what a W&B key means
TOP_LEVEL_KEYS = WANDB_KEYS + OWN_KEYS + tuple(UNSUPPORTED_KEYS)


def parse_sweep(data: Mapping[str, Any], *, source: str = "<dict>") -> SweepSpec:
    """Check a sweep configuration and build its SweepSpec. Raises SpecError with every problem."""
    if not isinstance(data, Mapping):
        what = "an empty file" if data is None else show(data)
        raise SpecError(
            [Problem("", f"expected a mapping of sweep keys at the top level, got {what}")], source
        )
    problems: list[Problem] = []
    for key in data:
        if key in UNSUPPORTED_KEYS:
            problems.append(Problem(str(key), UNSUPPORTED_KEYS[key]))
        elif key not in TOP_LEVEL_KEYS and looks_like_a_parameter(data[key]):
            problems.append(Problem(str(key), "unknown key; a parameter goes under parameters:"))
        elif key not in TOP_LEVEL_KEYS:
            problems.append(Problem(str(key), unknown_key(str(key), TOP_LEVEL_KEYS)))

    method = _method(data, problems)
    if "parameters" in data:
        parameters = parse_parameters(data["parameters"], "parameters", (), problems)
    else:
        parameters = []
        problems.append(Problem("parameters", "required: at least one parameter"))
    metric = parse_metric(data["metric"], problems) if "metric" in data else None
    stopping = parse_early_terminate(data["early_terminate"], problems) if "early_terminate" in data else None
    command = parse_command(data["command"], problems) if "command" in data else DEFAULT_COMMAND
    options = parse_options(data["sweeper"], problems) if "sweeper" in data else Options()
    pbt = getattr(options, "pbt", None)
    if isinstance(pbt, Pbt) and pbt.checkpoints == MLFLOW_CHECKPOINTS:
        root = mlflow_checkpoint_root(data.get("integrations"), problems)
        options = dataclasses.replace(options, pbt=dataclasses.replace(pbt, checkpoints=root or ""))
    strings = {k: string(data[k], k, problems) for k in _STRINGS if k in data}
    run_cap = _run_cap(data, problems)
    _check_reserved(data, problems)
    if problems:
        raise SpecError(problems, source)

    spec = SweepSpec(
        method=method,
        parameters=tuple(parameters),
        metric=metric,
        early_terminate=stopping,
        command=command,
        program=strings.get("program"),
        run_cap=run_cap,
        name=strings.get("name"),
        description=strings.get("description"),
        project=strings.get("project"),
        entity=strings.get("entity"),
        options=options,
        raw=copy.deepcopy(dict(data)),
    )
    # The method's own rules need a well-formed spec, so they run last.
    from sweeper.strategies.registry import strategy_class

    problems = [Problem(path, message) for path, message in strategy_class(method).check_spec(spec)]
    problems += _cross_section_problems(spec)
    if problems:
        raise SpecError(problems, source)
    return spec


# Methods that allocate ``sweeper.resource`` themselves.
_RESOURCE_METHODS = ("hyperband", "bohb")


def _cross_section_problems(spec: SweepSpec) -> list[Problem]:
    """Settings that are each valid but would silently do nothing together."""
    problems = []
    if spec.early_terminate is not None and spec.metric is None:
        problems.append(
            Problem(
                "early_terminate", "needs a metric to judge trials by; add metric: {name: ..., goal: ...}"
            )
        )
    if spec.options.resource is not None and spec.method not in _RESOURCE_METHODS:
        problems.append(
            Problem(
                "sweeper.resource",
                f"only methods {' and '.join(_RESOURCE_METHODS)} allocate a resource; "
                f"method {spec.method} would ignore it",
            )
        )
    if spec.options.pbt is not None and spec.method != "pbt":
        problems.append(
            Problem("sweeper.pbt", f"only method pbt runs a population; method {spec.method} would ignore it")
        )
    return problems


def _method(data: Mapping[str, Any], problems: list[Problem]) -> Any:
    # Imported here: sweeper.strategies imports sweeper.spec.
    from sweeper.strategies.registry import WANDB_METHODS, available_methods

    available = available_methods()
    if "method" not in data:
        problems.append(Problem("method", f"required; one of {', '.join(available)}"))
        return INVALID
    method = data["method"]
    if isinstance(method, str) and method in available:
        return method
    if method in WANDB_METHODS:
        message = (
            f"{method!r} is a W&B method this version does not run yet; available: {', '.join(available)}"
        )
    else:
        near = closest(method, [*available, *WANDB_METHODS]) if isinstance(method, str) else None
        hint = f"; did you mean {near!r}?" if near else f"; available: {', '.join(available)}"
        message = f"unknown method {show(method)}{hint}"
    problems.append(Problem("method", message))
    return INVALID


def _run_cap(data: Mapping[str, Any], problems: list[Problem]) -> int | None:
    if "run_cap" not in data:
        return None
    raw = data["run_cap"]
    before = len(problems)
    value = integer(raw, "run_cap", problems, what="an integer > 0")
    if len(problems) == before and value <= 0:
        problems.append(Problem("run_cap", f"expected an integer > 0, got {show(raw)}"))
    return value if len(problems) == before else None


def _check_reserved(data: Mapping[str, Any], problems: list[Problem]) -> None:
    """Keys accepted for W&B compatibility or for tracker adapters, but not used by the search."""
    if "integrations" in data:
        check_integrations(data["integrations"], problems)
    if "kind" in data:
        choice(data["kind"], ("sweep",), "kind", problems)
    if "controller" in data:
        raw = data["controller"]
        if mapping(raw, "controller", ("type",), problems, "such as {type: local}"):
            if "type" not in raw:
                problems.append(Problem(join("controller", "type"), "required; expected local or cloud"))
            else:
                choice(raw["type"], ("local", "cloud"), "controller.type", problems)
