"""Object-valued inputs (a LoRA: ``{path, scale}``): checked against the field's object schema,
given their nested defaults, and named by one short label everywhere a person reads them.

A schema field of ``"type": "object"`` takes a mapping. In an axis, ``none`` (the word, or YAML
null) stands for ``ABSENT``: that job's input leaves the field out entirely, so its job key equals
that of a spec without the field. A ``path`` key (a LoRA's) must be an asset name (a bare file
name such as ``my-style.safetensors``) or an https URL: RunComfy fetches nothing else.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "ABSENT",
    "ObjectProblem",
    "is_absent",
    "is_object_field",
    "label",
    "normalise_object",
    "present",
]


class ObjectProblem(ValueError):
    """A mapping that does not fit its object schema; the message names the key at fault."""

    @property
    def message(self) -> str:
        return str(self.args[0])


class _Absent:
    """The value of an object field a job leaves out (``none`` in an axis)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "none"

    def __reduce__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
_ASSET = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_NONE_WORDS = frozenset({"none"})
_MAX_LABEL = 48  # characters of a path's stem (or the other keys) kept in a label


def is_object_field(prop: Mapping[str, Any] | None) -> bool:
    """Whether a schema property takes a mapping."""
    return bool(prop) and prop is not None and prop.get("type") == "object"


def is_absent(value: Any) -> bool:
    """``none`` written in a spec (YAML null or the word), or ABSENT itself."""
    return value is None or value is ABSENT or (isinstance(value, str) and value in _NONE_WORDS)


def present(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the fields a job leaves out (a copy when it leaves any out)."""
    if ABSENT in values.values():  # ABSENT equals only itself: an identity test, in C
        return {k: v for k, v in values.items() if v is not ABSENT}
    return values


def normalise_object(prop: Mapping[str, Any], value: Any) -> dict[str, Any]:
    """``value`` checked against an object schema, nested defaults applied, numbers as floats.

    Raises ObjectProblem with one line naming the key at fault (the caller adds the field's name).
    """
    if not isinstance(value, Mapping):
        raise ObjectProblem(
            f"takes a mapping such as {_example(prop)} (or none), got {_show(value)}"
        )
    props: Mapping[str, Mapping[str, Any]] = prop.get("properties") or {}
    unknown = [str(k) for k in value if k not in props]
    if unknown and props:
        allowed = ", ".join(props)
        raise ObjectProblem(f"{unknown[0]}: unknown key; allowed: {allowed}")
    missing = [k for k in prop.get("required") or () if k not in value]
    if missing:
        raise ObjectProblem(f"{missing[0]}: required key missing, as in {_example(prop)}")
    out: dict[str, Any] = {}
    for key, sub in props.items():
        if key in value:
            out[key] = _member(key, sub, value[key])
        elif "default" in sub:
            out[key] = _member(key, sub, sub["default"])
    if not props:
        out = dict(value)
    return out


def _member(key: str, sub: Mapping[str, Any], value: Any) -> Any:
    kind = "number" if sub.get("type") == "float" else sub.get("type")
    if kind == "string":
        if not isinstance(value, str):
            raise ObjectProblem(f"{key}: must be a string, got {_show(value)}")
        if key == "path":
            _check_path(value)
    elif kind in ("number", "integer"):
        whole = kind == "integer"
        ok = isinstance(value, int if whole else int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            wanted = "a whole number" if whole else "a number"
            raise ObjectProblem(f"{key}: must be {wanted}, got {_show(value)}")
        low, high = sub.get("minimum"), sub.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            shown_low = "-inf" if low is None else low
            shown_high = "inf" if high is None else high
            raise ObjectProblem(f"{key}: must be between {shown_low} and {shown_high}, got {value}")
        value = value if whole else float(value)
    elif kind == "boolean" and not isinstance(value, bool):
        raise ObjectProblem(f"{key}: must be true or false, got {_show(value)}")
    if "enum" in sub and value not in sub["enum"]:
        allowed = ", ".join(_show(v) for v in sub["enum"])
        raise ObjectProblem(f"{key}: {_show(value)} is not allowed; allowed: {allowed}")
    return value


def _check_path(path: str) -> None:
    """A LoRA path: an asset name or an https URL; RunComfy reads nothing else."""
    if path.startswith("https://"):
        # urlsplit drops tabs and newlines silently (the label would not show them) and raises
        # ValueError for a broken [IPv6] host or port: each is refused here in one line.
        clean = not any(c.isspace() or not c.isprintable() for c in path)
        try:
            parts = urlsplit(path)
            valid = clean and bool(parts.hostname) and (parts.port or 443) > 0
        except ValueError:
            valid = False
        if valid:
            return
        raise ObjectProblem(f"path: {_show(path)} is not a valid https URL")
    if _ASSET.match(path) and ".." not in path:
        return
    raise ObjectProblem(
        f"path: {_show(path)} is neither a LoRA asset name (a bare file name such as "
        "my-style.safetensors) nor an https URL"
    )


def label(value: Any) -> str:
    """A short readable name of an object value, for file names, reports, status and exports.

    ``my-style@0.5`` for ``{path: my-style.safetensors, scale: 0.5}``, the file stem of an https
    URL's path, other keys as ``key=value``; ``none`` for a field left out.
    """
    if is_absent(value):
        return "none"
    if not isinstance(value, Mapping):
        return str(value)
    parts: list[str] = []
    rest = dict(value)
    path = rest.pop("path", None)
    scale = rest.pop("scale", None)
    if isinstance(path, str):
        parts.append(_stem(path))
    if scale is not None:
        parts.append(f"@{_number(scale)}")
    extra = ",".join(f"{k}={_number(v)}" for k, v in sorted(rest.items()))
    extra = _short(extra, extra)
    if extra:
        parts.append(("," if parts else "") + extra)
    return "".join(parts) or "{}"


def _stem(path: str) -> str:
    whole = path
    if path.startswith(("https://", "http://")):
        path = urlsplit(path).path
    return _short(PurePosixPath(path).stem or PurePosixPath(path).name or "lora", whole)


def _short(text: str, whole: str) -> str:
    """``text`` as it is when short; else its start and a hash of ``whole`` (a 10 kB URL is
    still a short label in a plan, a report or a CSV, and two such URLs stay apart)."""
    if len(text) <= _MAX_LABEL:
        return text
    digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
    return f"{text[: _MAX_LABEL - 9]}~{digest}"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _example(prop: Mapping[str, Any]) -> str:
    props: Mapping[str, Any] = prop.get("properties") or {}
    if "path" in props:
        return "{path: my-style.safetensors, scale: 0.8}" if "scale" in props else "{path: ...}"
    keys = list(prop.get("required") or props)[:2]
    return "{" + ", ".join(f"{k}: ..." for k in keys) + "}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
