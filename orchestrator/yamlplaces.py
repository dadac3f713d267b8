"""YAML read with the line and column of every field, and one-line errors placed there.

``parse_yaml`` composes the node tree first (recording where each field path starts, and refusing
duplicate keys, which ``yaml.safe_load`` would silently merge), then builds plain Python data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError

__all__ = ["Places", "brief", "dotted", "parse_yaml", "pydantic_message"]


# Bounds on what a spec's YAML may expand to. Aliases repeat the node they name without copying
# it, so a few hundred bytes can stand for 10**9 values; nesting is composed recursively.
MAX_DEPTH = 100
MAX_NODES = 1_000_000
MAX_TEXT = 64 * 1024 * 1024
# Python refuses to print an integer of more digits than this (sys.get_int_max_str_digits()).
MAX_INT_DIGITS = 4300


class Places:
    """Finds the YAML line:column of field paths and formats the one-line errors."""

    def __init__(self, file: Path, root: yaml.Node | None = None) -> None:
        self.file = file
        self.root = root

    def check_keys(self) -> None:
        """Refuse a duplicate key in any mapping (each node visited once, aliases or not)."""
        seen: set[int] = set()
        stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(self.root, ())] if self.root else []
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                keys: set[str] = set()
                for key_node, value_node in node.value:
                    key = _name(key_node)
                    if key_node.tag != "tag:yaml.org,2002:merge" and key in keys:
                        message = "duplicate key; give each key once"
                        raise self.error((*path, key), message, key=True)
                    keys.add(key)
                    stack.append((value_node, (*path, key)))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((item, (*path, str(i))) for i, item in enumerate(node.value))

    def mark(self, path: tuple[str, ...], *, key: bool = False) -> yaml.Mark | None:
        """Where the field at ``path`` starts (its key if ``key``); None if the YAML has no such
        field. A key given twice through a merge (``<<``) is found where it takes effect."""
        node, key_node = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pairs = [(k, v) for k, v in node.value if _name(k) == part]
                node, key_node = (pairs[-1][1], pairs[-1][0]) if pairs else (None, None)
            elif isinstance(node, yaml.SequenceNode) and part.isdigit():
                index = int(part)
                node = node.value[index] if index < len(node.value) else None
                key_node = None
            else:
                return None
        if key:
            return key_node.start_mark if key_node else None
        return node.start_mark if node else None

    def error(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> SpecError:
        """``<file>:<line>:<col>: <path>: <message>`` at the field (its key if ``key``), or the
        nearest enclosing field the YAML has."""
        parts = tuple(str(p) for p in path)
        mark = self.mark(parts, key=True) if key else None
        probe = parts
        while mark is None and probe:
            mark = self.mark(probe)
            probe = probe[:-1]
        mark = mark or self.mark(())
        place = f"{self.file}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.file)
        return SpecError(f"{place}: {dotted(path)}: {message}" if path else f"{place}: {message}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents that nest or expand (through aliases) too far.

    Each node's expanded size (values, and characters of text) is known once it is composed: an
    alias adds the size of the node it names, so the total is counted without expanding anything.
    """

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(text)
        self.path = path
        self.depth = 0
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            named = self.anchors.get(event.anchor)
            if named is not None and id(named) not in self.sizes:
                raise self.refuse(event.start_mark, f"alias *{event.anchor} is used inside itself")
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            problem = f"YAML nested more than {MAX_DEPTH} levels deep; a spec needs a few"
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise self.refuse(event.start_mark, problem)
        node: Any = super().compose_node(parent, index)
        self.depth -= 1
        self.sizes[id(node)] = size = self._size(node)
        if size[0] > MAX_NODES or size[1] > MAX_TEXT:
            problem = (
                f"YAML expands to more than {MAX_NODES:,} values or {MAX_TEXT // 2**20} MiB of "
                "text (an alias repeats all it names); list a big axis in a file ({file: ...})"
            )
            raise self.refuse(node.start_mark, problem)
        return node

    def refuse(self, mark: yaml.Mark, problem: str) -> SpecError:
        return SpecError(f"{self.path}:{mark.line + 1}:{mark.column + 1}: {problem}")

    def _size(self, node: yaml.Node) -> tuple[int, int]:
        if isinstance(node, yaml.ScalarNode):
            return 1, len(node.value)
        children = node.value
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        values, text = 1, 0
        for child in children:
            v, t = self.sizes[id(child)]
            values, text = values + v, text + t
        return values, text

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isalnum() for c in str(node.value))
        value = super().construct_yaml_int(node) if digits <= MAX_INT_DIGITS else None
        if value is None or abs(value) >= 10**MAX_INT_DIGITS:
            problem = f"a whole number of more than {MAX_INT_DIGITS:,} digits; give a smaller one"
            raise self.refuse(node.start_mark, problem)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def parse_yaml(path: Path, text: str) -> tuple[Any, Places]:
    """The document as plain data (safe tags only) and the places of its fields."""
    try:
        loader = _Loader(text, path)  # its reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: YAML error: {' '.join(str(exc).split())}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{path}: empty spec; it needs at least model and inputs")
        where = Places(path, node)
        where.check_keys()
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


def _name(key: yaml.Node) -> str:
    """A mapping key as a field name; a list or mapping used as a key is named by where it is (its
    text could be huge, and a field path never holds one)."""
    if isinstance(key, yaml.ScalarNode):
        return str(key.value)
    return f"<{key.tag} at {key.start_mark.line + 1}:{key.start_mark.column + 1}>"


def dotted(path: tuple[Any, ...]) -> str:
    """``("axes", "cfg", "2")`` as ``axes.cfg[2]``."""
    text = ""
    for part in path:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit() and text):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def brief(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters: a message quotes what was given, not 1 MB."""
    text = repr(value)
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} characters)"


def pydantic_message(error: Any) -> str:
    """A pydantic error in comfysweep's words: what is wrong and what was given."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    shown = f", got {brief(got)}"
    messages = {
        "int_type": "must be a whole number",
        "float_type": "must be a number",
        "finite_number": "must be a finite number",
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
