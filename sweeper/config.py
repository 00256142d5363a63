"""A trial's configuration as a script reads it: ``config["lr"]`` or ``config.lr``, nested too.

Standard library only, so importing it inside a training script costs nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["Config", "deep_merge"]


class Config(MutableMapping[str, Any]):
    """A config read as ``config["lr"]`` or ``config.lr``; nested mappings read the same way."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return Config._view(value) if isinstance(value, Mapping) else value

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def as_dict(self) -> dict[str, Any]:
        """A deep, plain copy."""
        return copy.deepcopy(_unwrap(self._data))

    @classmethod
    def _view(cls, data: Mapping[str, Any]) -> Config:
        # A view shares the nested dict, so ``config.model.depth = 3`` changes the run's config.
        view = cls.__new__(cls)
        target = data._data if isinstance(data, Config) else data
        object.__setattr__(view, "_data", target if isinstance(target, dict) else dict(target))
        return view


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
