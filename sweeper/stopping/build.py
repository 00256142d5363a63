"""The stopping rule a sweep runs, from its spec."""

from __future__ import annotations

import dataclasses

from sweeper.spec.model import Asha, Distribution, Hyperband, Pbt, Resource, SweepSpec
from sweeper.stopping.asha import AshaRule, BracketedAshaRule
from sweeper.stopping.base import StoppingRule
from sweeper.stopping.hyperband import HyperbandRule
from sweeper.stopping.pbt import PbtRule

# Methods that allocate ``sweeper.resource`` and stop trials at its rungs themselves.
RESOURCE_METHODS = ("hyperband", "bohb")


def build_rule(spec: SweepSpec) -> StoppingRule | None:
    """The sweep's rule, or None when nothing stops trials early (or there is no metric to judge)."""
    if spec.metric is None:
        return None
    if spec.method in RESOURCE_METHODS and (resource := resource_of(spec)) is not None:
        return BracketedAshaRule(spec.metric, resource)
    if spec.method == "pbt":
        return PbtRule(spec.metric, spec.options.pbt or Pbt(), seed=spec.options.seed or 0)
    match spec.early_terminate:
        case Hyperband() as config:
            return HyperbandRule(spec.metric, config)
        case Asha() as config:
            return AshaRule(spec.metric, config)
    return None


def resource_of(spec: SweepSpec) -> Resource | None:
    """``sweeper.resource`` with ``max`` filled in from its constant parameter; None when the spec
    has no usable resource (the methods that need one report why in their spec check)."""
    resource = spec.options.resource
    if resource is None:
        return None
    try:
        parameter = spec.parameter(resource.name)
    except KeyError:
        return None
    value = parameter.value
    if (
        parameter.distribution is not Distribution.CONSTANT
        or isinstance(value, bool)
        or not isinstance(value, int)
    ):
        return None
    if resource.max is not None and resource.max != value:
        return None
    return dataclasses.replace(resource, max=value)
