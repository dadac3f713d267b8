"""Checks of a submit beyond each field's own schema: list and object shapes, and media inputs.

A media input takes a public https URL, a bare asset name (the documented default of vace-fun's
image is one), or a base64 ``data:`` URI as RunComfy's own nodes send: its MIME type must be of the
field's kind (image/video/audio), its decoded bytes must look like that kind (their magic), and
they must fit RunComfy's caps (``CAPS``; the whole request's 64 MiB is config.MAX_BODY_BYTES).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from orchestrator import magic
from orchestrator.emulator.media import decode_data_uri
from orchestrator.models import FieldProblem, Model

__all__ = ["CAPS", "extra_problems", "media_problem", "problem_detail", "sniff"]

MIB = 1024 * 1024
# Decoded bytes a data: URI may carry, by kind (RunComfy's partner nodes' documented caps).
CAPS: dict[str, int] = {"image": 6 * MIB, "video": 32 * MIB, "audio": 16 * MIB}


def sniff(data: bytes) -> str | None:
    """The media kind the bytes' magic says ("image", "video", "audio"), or None: an MP4 by its
    tracks where it has any (ffmpeg brands an AAC-only MP4 isom), else by its brand."""
    kind = magic.kind_of_type(magic.media_type(data[: magic.HEAD_BYTES]))
    if kind == "video" and data[4:8] == b"ftyp" and magic.sound_alone(io.BytesIO(data), len(data)):
        return "audio"
    return kind


def _an(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def _a(kind: str) -> str:
    return {"image": "an image", "video": "a video"}.get(kind, f"{kind} data")


def media_problem(kind: str, value: Any) -> tuple[str, str] | None:
    """(message, type) of what is wrong with one media value of ``kind``, or None."""
    if not isinstance(value, str):
        return f"must be {_an(kind)} {kind} URL or data: URI string", "type"
    if not value.startswith("data:"):
        return None
    mime = value[5:].split(",", 1)[0].split(";", 1)[0].strip().lower()
    if not mime.startswith(f"{kind}/"):
        return (
            f"a data: URI of type {mime or 'none'!r} where {_an(kind)} {kind} is expected",
            "media_kind",
        )
    payload = value.partition(",")[2]
    size = len(payload) // 4 * 3 - len(payload[-2:]) + len(payload[-2:].rstrip("="))
    cap = CAPS[kind]
    if size > cap:  # told by the base64's length, before decoding it
        return (
            f"{kind} of {size:,} bytes is over RunComfy's {cap // MIB} MiB cap for "
            f"{_an(kind)} {kind}",
            "too_large",
        )
    try:
        data = decode_data_uri(value) or b""
    except ValueError as exc:
        return str(exc), "invalid_data_uri"
    found = sniff(data)
    if found != kind:
        what = f"are {_a(found)}" if found else "match no format"
        return f"{mime} data is not {_a(kind)}: its bytes {what}", "media_kind"
    return None


def extra_problems(model: Model, body: Mapping[str, Any], named: set[str]) -> list[dict[str, Any]]:
    """422 details for what the field schemas let through: a list or object input of another
    type, and media values; fields already in ``named`` (reported) are skipped."""
    detail: list[dict[str, Any]] = []
    for key in sorted(body.keys() - named):
        prop = model.properties.get(key)
        if prop is None:
            continue
        value, kind = body[key], model.media_kind(key)
        if prop.get("type") == "array" and not isinstance(value, list):
            detail.append(_detail(key, "must be a list", "type"))
        elif prop.get("type") == "object" and not isinstance(value, dict):
            detail.append(_detail(key, "must be an object", "type"))
        elif kind is not None:
            values = value if isinstance(value, list) else [value]
            for index, item in enumerate(values):
                problem = media_problem(kind, item)
                if problem is not None:
                    where = f"item {index + 1}: " if isinstance(value, list) else ""
                    detail.append(_detail(key, where + problem[0], problem[1]))
                    break
    return detail


def _detail(key: str, message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", key], "msg": f"{key}: {message}", "type": kind}


def problem_detail(model: Model, body: Mapping[str, Any], problem: FieldProblem) -> dict[str, Any]:
    """A field problem as a 422 detail, with a list's item count instead of the whole list (a
    list of data: URIs would otherwise be quoted whole)."""
    message = problem.message
    value = body.get(problem.key)
    if isinstance(value, list) and problem.kind == "invalid":
        prop = model.properties.get(problem.key, {})
        low, high = prop.get("minItems", 0), prop.get("maxItems", "any number of")
        message = f"has {len(value)} item(s); the schema allows {low} to {high}"
        if low <= len(value) and (not isinstance(high, int) or len(value) <= high):
            message = problem.message if len(problem.message) <= 300 else problem.message[:297]
    elif len(message) > 300:
        message = message[:297] + "..."
    return {"loc": ["body", problem.key], "msg": f"{problem.name}: {message}", "type": problem.kind}
