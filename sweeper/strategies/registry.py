"""Method name -> strategy class."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from sweeper.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}

# Methods W&B defines that a sweep file may name even before sweeper implements them.
WANDB_METHODS = ("grid", "random", "bayes", "custom")

S = TypeVar("S", bound="type[Strategy]")


def register(cls: S) -> S:
    """Class decorator: make ``cls.method`` usable as ``method:`` in a sweep file."""
    if cls.method in _REGISTRY and _REGISTRY[cls.method] is not cls:
        raise ValueError(f"method {cls.method!r} is already registered to {_REGISTRY[cls.method]!r}")
    _REGISTRY[cls.method] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(method: str) -> type[Strategy]:
    try:
        return _REGISTRY[method]
    except KeyError:
        raise KeyError(f"unknown method {method!r}; available: {', '.join(available_methods())}") from None
