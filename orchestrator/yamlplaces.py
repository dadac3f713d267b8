"""YAML read with the line and column of every field, and one-line errors placed there.

``parse_yaml`` composes the node tree first (recording where each field path starts, and refusing
duplicate keys, which ``yaml.safe_load`` would silently merge), then builds plain Python data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

__all__ = ["Places", "dotted", "parse_yaml", "pydantic_message"]


class Places:
    """Maps field paths to YAML line:column and formats the one-line errors."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.values: dict[tuple[str, ...], yaml.Mark] = {}
        self.keys: dict[tuple[str, ...], yaml.Mark] = {}

    def walk(self, node: yaml.Node, path: tuple[str, ...] = ()) -> None:
        """Record where each field path starts (list indices as digit strings); no duplicates."""
        self.values[path] = node.start_mark
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = str(key_node.value)
                self.keys[(*path, key)] = key_node.start_mark
                if key in seen:
                    raise self.error((*path, key), "duplicate key; give each key once", key=True)
                seen.add(key)
                self.walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, str(i)))

    def error(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> SpecError:
        """``<file>:<line>:<col>: <path>: <message>`` at the field (its key if ``key``), or the
        nearest enclosing field the YAML has."""
        parts = tuple(str(p) for p in path)
        mark = self.keys.get(parts) if key else None
        probe = parts
        while mark is None and probe:
            mark = self.values.get(probe)
            probe = probe[:-1]
        mark = mark or self.values.get(())
        place = f"{self.file}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.file)
        return SpecError(f"{place}: {dotted(path)}: {message}" if path else f"{place}: {message}")


def parse_yaml(path: Path, text: str) -> tuple[Any, Places]:
    """The document as plain data (safe tags only) and the places of its fields."""
    where = Places(path)
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: YAML error: {' '.join(str(exc).split())}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{path}: empty spec; it needs at least model and inputs")
        where.walk(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(filter(None, [exc.problem, exc.context])) or "invalid YAML"
        raise SpecError(f"{place}: YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: YAML error: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise where.error((), "the spec must be a mapping of keys (model, inputs, axes, ...)")
    return data, where


def dotted(path: tuple[Any, ...]) -> str:
    """``("axes", "cfg", "2")`` as ``axes.cfg[2]``."""
    text = ""
    for part in path:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit() and text):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def pydantic_message(error: Any) -> str:
    """A pydantic error in comfysweep's words: what is wrong and what was given."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    shown = f", got {got!r}"
    messages = {
        "int_type": "must be a whole number",
        "float_type": "must be a number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "dict_type": "must be a mapping of keys to values",
        "list_type": "must be a list",
        "model_type": "must be a mapping of keys to values",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be above {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "string_too_short": "must not be empty",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "is_instance_of": "must be a path",
        "path_type": "must be a path",
    }
    return messages.get(kind, str(error["msg"]).lower()) + shown
