"""Reading a sweep file (YAML or JSON) into a SweepSpec; every failure becomes a Problem."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sweeper.spec.integrations import tracking_uri_problem
from sweeper.spec.model import SweepSpec
from sweeper.spec.parse import parse_sweep
from sweeper.spec.problems import Problem, SpecError
from sweeper.spec.sections import checkpoint_scheme_problem
from sweeper.spec.storable import storable_problems

# YAML 1.2 floats that YAML 1.1 (PyYAML) leaves as strings: 1e-5, 1E+3, 2.e4, 1.0e5.
_FLOAT_12 = re.compile(
    r"""^[-+]?(?:
        [0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
      | \.[0-9_]+(?:[eE][-+]?[0-9]+)?
      | [0-9][0-9_]*\.[0-9_]*
    )$""",
    re.X,
)


_MERGE = "tag:yaml.org,2002:merge"


class SweepLoader(yaml.SafeLoader):
    """A SafeLoader that reads YAML 1.2 floats as numbers and notes duplicate keys."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[Problem] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys silently; a second `lr:` is almost always a mistake.
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # ``<<`` (a merge of an anchored mapping) is no key of its own; PyYAML resolves it below.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                line = key_node.start_mark.line + 1
                self.duplicates.append(Problem("", f"duplicate key {key!r} at line {line}"))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _timestamp_as_written(loader: SweepLoader, node: yaml.ScalarNode) -> str:
    # A date reaches a W&B sweep's script as the text written (W&B sends the file on as YAML
    # text); a date object could not be stored, nor passed as an argument as written.
    return loader.construct_scalar(node)


# These copy the parent's tables first, so plain SafeLoader is left untouched.
SweepLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
SweepLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_written)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`SweepLoader`; raises SpecError for malformed text or duplicate keys."""
    loader = SweepLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "unreadable"
        raise SpecError([Problem("", f"malformed YAML{where}: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem("", f"malformed YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise SpecError(loader.duplicates)
    return data


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            [Problem("", f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
        ) from None


def read_sweep_data(path: str | os.PathLike[str]) -> Any:
    """The file's content as Python data (not yet checked)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem("", "file not found")], source=str(path)) from None
    except IsADirectoryError:
        raise SpecError([Problem("", "is a directory, not a sweep file")], source=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError([Problem("", "not a UTF-8 text file")], source=str(path)) from None
    except OSError as exc:
        raise SpecError(
            [Problem("", f"cannot read the file: {exc.strerror or exc}")], source=str(path)
        ) from None
    try:
        return _load_json(text) if p.suffix.lower() == ".json" else load_yaml(text)
    except SpecError as exc:
        raise SpecError(exc.problems, source=str(path)) from None


def load_sweep_file(
    path: str | os.PathLike[str], amend: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> SweepSpec:
    """Read, parse and check a sweep file (``.yaml``/``.yml`` or ``.json``). Raises SpecError.

    ``amend`` changes the file's mapping before it is checked (command-line flags that add to it)."""
    raw = read_sweep_data(path)
    if amend is not None and isinstance(raw, dict):
        raw = amend(raw)
    return parse_new_sweep(raw, source=str(path))


def parse_new_sweep(raw: Any, source: str = "<dict>") -> SweepSpec:
    """:func:`parse_sweep` for a sweep about to be made, which also checks what only the machine
    making it can (a checkpoint URL's scheme) and what older sweeps were made with (a mistyped
    MLflow URI); every problem is listed at once. Its values must be plain data, which a sweeper
    server can take (a sweep already stored is read as it is)."""
    if plain := storable_problems(raw):  # said alone: each would also read as the wrong kind in parse_sweep
        raise SpecError(plain, source=source)
    problems = [p for p in [checkpoint_scheme_problem(raw), tracking_uri_problem(raw)] if p is not None]
    try:
        spec = parse_sweep(raw, source=source)
    except SpecError as exc:
        raise SpecError([*exc.problems, *problems], source=source) from None
    if problems:
        raise SpecError(problems, source=source)
    return spec
