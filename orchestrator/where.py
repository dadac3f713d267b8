"""``--where``: which jobs a command means, by their inputs (``cfg >= 5 and steps == 8``).

The grammar is tiny and parsed by hand (never ``eval``)::

    expr  := and ("or" and)*
    and   := not ("and" not)*
    not   := "not" not | "(" expr ")" | test
    test  := NAME OP value | NAME ["not"] "in" "[" value ("," value)* "]"
    OP    := == | != | < | <= | > | >=
    value := number | 'string' | "string" | true | false

A NAME is an input's friendly name (``cfg``, ``steps``, ``seed``) or its raw field name
(``108_cfg``); a local image or video is compared by its file name as the spec wrote it;
``model`` is the job's model id (``model == 'wan-ai/wan-3.0/image-to-video'``).
``parse`` checks the syntax; ``Where.bind`` checks the names and the kinds of values against
the sweep's jobs, so a typo or a string compared to a number is one line that names it, before
anything is changed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from orchestrator.errors import ComfysweepError
from orchestrator.models import get_model, suggest

__all__ = ["Where", "WhereError", "job_values", "parse", "select"]

MODEL = "model"  # the pseudo-input naming a job's model (by its id)
# Deeper nesting than this is no filter anyone writes; it would only exhaust the stack.
MAX_DEPTH = 64
MAX_LENGTH = 4000

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)(?![\w.])
  | (?P<name>\w+)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}


class WhereError(ComfysweepError):
    """The --where filter is not understood."""


def _kind(value: Any) -> str:
    """What a value is, for comparisons: "number", "string", "boolean" or "other"."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


@dataclass(frozen=True)
class _Token:
    kind: str  # number, name, string, op, punct, keyword, end
    text: str
    at: int  # 0-based offset in the filter


@dataclass(frozen=True)
class _Test:
    name: str
    op: str  # one of _OPS, or "in" / "not in"
    values: tuple[Any, ...]
    at: int

    def __call__(self, inputs: Mapping[str, Any]) -> bool:
        if self.name not in inputs:
            return False
        value = inputs[self.name]
        kind = _kind(value)
        if self.op in ("in", "not in"):
            found = any(_kind(v) == kind and v == value for v in self.values)
            return found == (self.op == "in")
        (want,) = self.values
        if _kind(want) != kind:  # a job whose value is of another kind: never equal, unordered
            return self.op == "!="
        if kind == "boolean" and self.op not in ("==", "!="):
            return False
        try:
            return _OPS[self.op](value, want)
        except TypeError:
            return False


@dataclass(frozen=True)
class _Not:
    inner: _Node

    def __call__(self, inputs: Mapping[str, Any]) -> bool:
        return not self.inner(inputs)


@dataclass(frozen=True)
class _All:
    parts: tuple[_Node, ...]

    def __call__(self, inputs: Mapping[str, Any]) -> bool:
        return all(part(inputs) for part in self.parts)


@dataclass(frozen=True)
class _Any:
    parts: tuple[_Node, ...]

    def __call__(self, inputs: Mapping[str, Any]) -> bool:
        return any(part(inputs) for part in self.parts)


_Node = _Test | _Not | _All | _Any


@dataclass(frozen=True)
class Where:
    """A parsed ``--where``: call it with a job's inputs (``job_values``) to test the job."""

    text: str
    _root: _Node

    def __call__(self, inputs: Mapping[str, Any]) -> bool:
        return self._root(inputs)

    def tests(self) -> list[_Test]:
        """Every comparison in the filter, in the order written."""
        out: list[_Test] = []
        stack: list[_Node] = [self._root]
        while stack:
            node = stack.pop()
            if isinstance(node, _Test):
                out.append(node)
            elif isinstance(node, _Not):
                stack.append(node.inner)
            else:
                stack.extend(reversed(node.parts))
        return sorted(out, key=lambda t: t.at)

    def bind(self, kinds: Mapping[str, set[str]], *, shown: Iterable[str] | None = None) -> None:
        """Check the filter against the jobs' inputs: ``kinds`` maps each name a job has to the
        kinds of value it takes. An unknown name lists ``shown`` (default: every name); a value of
        a kind the name never takes (a string for cfg) is an error too."""
        for test in self.tests():
            if test.name not in kinds:
                names = sorted(shown if shown is not None else kinds)
                same = [n for n in names if n.lower() == test.name.lower()]  # CFG for cfg
                hint = f" (did you mean {same[0]!r}?)" if same else suggest(test.name, names)
                listed = f"the jobs have: {', '.join(names)}" if names else "the sweep has no jobs"
                raise self._error(test.at, f"no input named {test.name!r}{hint}; {listed}")
            have = kinds[test.name]
            for value in test.values:
                kind = _kind(value)
                if kind not in have:
                    raise self._error(
                        test.at,
                        f"{test.name} is a {'/'.join(sorted(have))} in this sweep's jobs, "
                        f"compared with the {kind} {_show(value)}",
                    )
                if kind == "boolean" and test.op not in ("==", "!=", "in", "not in"):
                    raise self._error(
                        test.at,
                        f"{test.name} {test.op} {_show(value)}: "
                        "true and false are only compared with == or !=",
                    )

    def _error(self, at: int, problem: str) -> WhereError:
        return WhereError(f"--where {_quote(self.text)}: column {at + 1}: {problem}")


def parse(text: str) -> Where:
    """Parse a ``--where`` filter; WhereError (one line, with the column) when malformed."""
    if len(text) > MAX_LENGTH:
        raise WhereError(f"--where is {len(text)} characters long; at most {MAX_LENGTH}")
    parser = _Parser(text, _tokens(text))
    root = parser.expr(0)
    parser.expect_end()
    return Where(text, root)


def job_values(model_id: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A job's inputs under both names: the raw field name and the friendly one."""
    model = get_model(model_id)
    out = dict(inputs)
    for key, value in inputs.items():
        out.setdefault(model.display_name(key), value)
    return out


class _Job(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def inputs(self) -> Mapping[str, Any]: ...


J = TypeVar("J", bound=_Job)


def select(where: Where | str | None, jobs: Iterable[J], pick: Callable[[J], bool]) -> list[J]:
    """The jobs ``pick`` chooses that match ``where`` (None: all of them), in ``jobs``' order.

    Every job of ``jobs`` (the sweep's, in one pass) names the inputs that exist and the kinds of
    value each takes, so an unknown name or a string compared to a number is a WhereError even
    when no chosen job has that input.
    """
    if where is None:
        return [job for job in jobs if pick(job)]
    parsed = parse(where) if isinstance(where, str) else where
    kinds: dict[str, set[str]] = {}
    shown: set[str] = set()
    chosen: list[tuple[J, dict[str, Any]]] = []
    models: dict[str, Any] = {}
    for job in jobs:
        model = models.get(job.model_id)
        if model is None:
            model = models[job.model_id] = get_model(job.model_id)
        values = dict(job.inputs)
        # A local file is sent as a data: URI; the user knows it by the name they wrote.
        values.update(getattr(job, "sources", None) or {})
        for key in job.inputs:
            name = model.display_name(key)
            shown.add(name)
            values.setdefault(name, values[key])
        # ``model``: the job's model id (a sweep of several models), unless an input has the name.
        values.setdefault(MODEL, job.model_id)
        for name, value in values.items():
            kinds.setdefault(name, set()).add(_kind(value))
        if pick(job):
            chosen.append((job, values))
    if len(models) > 1:  # said among the names only where it tells jobs apart
        shown.add(MODEL)
    parsed.bind(kinds, shown=shown)
    return [job for job, values in chosen if parsed(values)]


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            hint = " (== compares)" if text[at] == "=" else ""
            raise WhereError(
                f"--where {_quote(text)}: column {at + 1}: unexpected {_quote(text[at])}{hint}"
            )
        kind = match.lastgroup or ""
        word = match.group()
        if kind == "name" and word.lower() in _KEYWORDS:
            kind, word = "keyword", word.lower()
        if kind != "space":
            out.append(_Token(kind, word, at))
        at = match.end()
    out.append(_Token("end", "", len(text)))
    return out


class _Parser:
    """Recursive descent over the tokens; ``depth`` bounds the nesting."""

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0

    @property
    def here(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def error(self, expected: str, token: _Token | None = None) -> WhereError:
        token = token or self.here
        found = "the end" if token.kind == "end" else _quote(token.text)
        return WhereError(
            f"--where {_quote(self.text)}: column {token.at + 1}: expected {expected}, "
            f"found {found}"
        )

    def is_(self, kind: str, text: str | None = None) -> bool:
        token = self.here
        return token.kind == kind and (text is None or token.text == text)

    def expect_end(self) -> None:
        if not self.is_("end"):
            raise self.error("'and', 'or' or the end")

    def expr(self, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise self.error(f"at most {MAX_DEPTH} levels of nesting")
        parts = [self.conjunction(depth)]
        while self.is_("keyword", "or"):
            self.take()
            parts.append(self.conjunction(depth))
        return parts[0] if len(parts) == 1 else _Any(tuple(parts))

    def conjunction(self, depth: int) -> _Node:
        parts = [self.negation(depth)]
        while self.is_("keyword", "and"):
            self.take()
            parts.append(self.negation(depth))
        return parts[0] if len(parts) == 1 else _All(tuple(parts))

    def negation(self, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise self.error(f"at most {MAX_DEPTH} levels of nesting")
        if self.is_("keyword", "not"):
            self.take()
            return _Not(self.negation(depth + 1))
        if self.is_("punct", "("):
            self.take()
            inner = self.expr(depth + 1)
            if not self.is_("punct", ")"):
                raise self.error("')'")
            self.take()
            return inner
        return self.test()

    def test(self) -> _Test:
        if not self.is_("name"):
            raise self.error("an input name (cfg, steps, seed, ...)")
        name = self.take()
        if self.is_("keyword", "in") or self.is_("keyword", "not"):
            negated = self.take().text == "not"
            if negated and not self.is_("keyword", "in"):
                raise self.error("'in'")
            if negated:
                self.take()
            return _Test(name.text, "not in" if negated else "in", self.values(), name.at)
        if not self.is_("op"):
            raise self.error(f"a comparison (==, !=, <, <=, >, >=, in) after {name.text}")
        op = self.take().text
        return _Test(name.text, op, (self.value(op),), name.at)

    def values(self) -> tuple[Any, ...]:
        if not self.is_("punct", "["):
            raise self.error("'[' and a list of values")
        self.take()
        out = [self.value("in")]
        while self.is_("punct", ","):
            self.take()
            out.append(self.value(","))
        if not self.is_("punct", "]"):
            raise self.error("',' or ']'")
        self.take()
        return tuple(out)

    def value(self, after: str) -> Any:
        token = self.here
        expected = f"a value after {after!r} (a number, a 'string', true or false)"
        if token.kind == "number":
            number = float(token.text)
            if not math.isfinite(number):
                raise self.error("a finite number", token)
            self.take()
            return int(token.text) if re.fullmatch(r"-?\d+", token.text) else number
        if token.kind == "string":
            self.take()
            return token.text[1:-1]
        if token.kind == "keyword" and token.text in ("true", "false"):
            self.take()
            return token.text == "true"
        raise self.error(expected)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _quote(text: str) -> str:
    """``text`` quoted on one line: what a user typed, control characters escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f'"{shown}"' if "'" in shown else f"'{shown}'"
