"""``method: hyperband``: asynchronous Hyperband over a resource parameter.

Configurations are drawn at random (as ``method: random``); each trial's config sets the
resource parameter (``sweeper: {resource: epochs}``, a constant such as ``epochs: {value: 81}``)
to its maximum, and the sweep's stopping rule (brackets of ASHA, see
:mod:`sweeper.stopping.asha`) stops trials at the rungs of their bracket.
"""

from __future__ import annotations

from sweeper.spec import SweepSpec
from sweeper.spec.model import Distribution
from sweeper.stopping.build import resource_of
from sweeper.strategies.random_search import RandomSearch
from sweeper.strategies.registry import register

_EXAMPLE = "sweeper: {resource: epochs} with parameters: {epochs: {value: 81}}"


def resource_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """What keeps a spec from running a resource-allocating method, as (key path, message)."""
    method = spec.method
    problems: list[tuple[str, str]] = []
    if spec.metric is None:
        problems.append(("metric", f"required: method {method} compares trials by it at each rung"))
    if spec.early_terminate is not None:
        problems.append(
            ("early_terminate", f"method {method} stops trials itself at the resource's rungs; remove it")
        )
    resource = spec.options.resource
    if resource is None:
        problems.append(
            ("sweeper.resource", f"required by method {method}: the parameter to allocate, e.g. {_EXAMPLE}")
        )
        return problems
    try:
        parameter = spec.parameter(resource.name)
    except KeyError:
        names = ", ".join(p.name for p in spec.parameters)
        problems.append(
            (
                "sweeper.resource.name",
                f"no parameter {resource.name!r} (parameters: {names}); add it as a constant, "
                f"e.g. parameters: {{{resource.name}: {{value: 81}}}}",
            )
        )
        return problems
    value = parameter.value
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if parameter.distribution is not Distribution.CONSTANT or not is_int:
        got = (
            parameter.distribution.value
            if parameter.distribution is not Distribution.CONSTANT
            else repr(value)
        )
        problems.append(
            (
                parameter.key_path,
                f"the resource must be a constant integer, the most each trial gets "
                f"(e.g. {{value: 81}}); got {got}",
            )
        )
        return problems
    if resource.max is not None and resource.max != value:
        problems.append(
            (
                "sweeper.resource.max",
                f"is {resource.max} but {parameter.key_path} is {value}; give one or make them equal",
            )
        )
    elif value < resource.min * resource.eta:
        problems.append(
            (
                parameter.key_path,
                f"{value} is below min * eta ({resource.min} * {resource.eta:g}): no rung to stop trials at",
            )
        )
    elif resource_of(spec) is None:  # pragma: no cover - every reason is reported above
        problems.append(("sweeper.resource", "cannot be used"))
    return problems


@register
class HyperbandSearch(RandomSearch):
    """Random configurations, each given the full resource; the stopping rule cuts them at rungs."""

    method = "hyperband"

    @classmethod
    def check_spec(cls, spec: SweepSpec) -> list[tuple[str, str]]:
        return resource_problems(spec)
