"""A trial's configuration as a script reads it: ``config["lr"]`` or ``config.lr``, nested too.

A nested mapping reads as a :class:`Section`, a ``dict`` subclass (as in ``wandb.config`` nested
values are dicts, so ``json.dumps(dict(config))`` works) that also reads by attribute;
``as_dict()`` gives plain dicts. Standard library only, so
importing it inside a training script costs nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["Config", "Section", "deep_merge"]


class _ByAttribute:
    """``x.name`` reads, writes and deletes ``x["name"]``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_data":  # copy and pickle ask before a copy has its data
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None


class Section(_ByAttribute, dict):
    """A nested part of a config: a plain ``dict`` that also reads and writes by attribute."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        return _section_in(self, key, dict.__getitem__(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return [(key, self[key]) for key in self]

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[key] for key in self]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as a plain dict: it loads where sweeper is not installed.
        return (dict, (_unwrap(self),))

    def __copy__(self) -> Section:
        return Section(dict(self))

    def __deepcopy__(self, memo: dict[int, Any]) -> Section:
        return Section(copy.deepcopy(dict(self), memo))  # a copy still reads by attribute


def _section_in(parent: dict[str, Any], key: str, value: Any) -> Any:
    """``value``, a mapping turned into a :class:`Section` that takes its place in ``parent``, so
    ``config.model.depth = 3`` changes the run's config."""
    if isinstance(value, Mapping) and not isinstance(value, Section):
        value = parent[key] = Section(value._data if isinstance(value, Config) else value)
    return value


class Config(_ByAttribute, MutableMapping[str, Any]):
    """A config read as ``config["lr"]`` or ``config.lr``; nested mappings read the same way."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return _section_in(self._data, key, self._data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it through __init__
        return (Config, (self._data,))

    def as_dict(self) -> dict[str, Any]:
        """A deep, plain copy."""
        return copy.deepcopy(_unwrap(self._data))


def _unwrap(value: Any) -> Any:
    if isinstance(value, Config):
        value = value._data
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def deep_merge(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with ``override`` on top; nested mappings merge key by key."""
    merged: dict[str, Any] = {k: _unwrap(v) for k, v in defaults.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = _unwrap(value)
    return merged
