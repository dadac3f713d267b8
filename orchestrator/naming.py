"""Output file names: the spec's ``run.filename`` template, checked early and rendered safely.

A template is Python ``str.format`` text over a job's inputs (friendly names or raw keys) plus
``key`` (the first 10 hex digits of the job key), ``index`` and ``repeat``; ``/`` makes folders.
Every rendered part is sanitised, so no input value can climb out of the results folder.
"""

from __future__ import annotations

import hashlib
import re
import string
from functools import lru_cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from orchestrator import objects
from orchestrator.models import Model, get_model

if TYPE_CHECKING:
    from orchestrator.spec import Spec
    from orchestrator.store import JobLike

__all__ = [
    "SPECIAL_FIELDS",
    "TemplateError",
    "default_template",
    "fit_part",
    "model_labels",
    "render_output_name",
    "sanitise",
    "validate_template",
    "with_tag",
]

SPECIAL_FIELDS = ("key", "index", "repeat")
MODEL_FIELD = "model"  # the model's short label, unless the model has an input of that name
SHORT_KEY = 10
_MAX_PART = 255  # bytes: the file-name limit of ext4, APFS and NTFS alike
_MAX_VALUE = 60  # characters of one long value (a prompt) kept in a name
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|\s]+')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXT = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}


class TemplateError(ValueError):
    """The output name template is invalid (the message says why)."""


def validate_template(
    template: str, fields: list[str], samples: dict[str, Any] | None = None
) -> set[str]:
    """The fields ``template`` uses; raises TemplateError for unknown fields or unsafe paths.

    ``samples`` (field -> a value it takes) lets a format spec such as ``{cfg:.1f}`` be tried now
    rather than fail on the first output.
    """
    control = _CONTROL.search(template)
    if control:
        raise TemplateError(f"must not contain control characters (found {control.group()!r})")
    allowed = [*fields, *SPECIAL_FIELDS]
    samples = {"key": "0" * SHORT_KEY, "index": 0, "repeat": 0, **(samples or {})}
    used: set[str] = set()
    for _literal, field, spec, conversion in _parse(template):
        if field is None:
            continue
        if field not in allowed:
            raise TemplateError(f"unknown field {{{field}}}; allowed: {', '.join(allowed)}")
        if conversion:
            raise TemplateError(f"{{{field}!{conversion}}}: conversions are not supported")
        if "{" in (spec or ""):
            raise TemplateError(f"{{{field}:{spec}}}: nested fields are not supported")
        if spec and field in samples:
            try:
                format(samples[field], spec)
            except (ValueError, TypeError):
                value = _plain(samples[field])
                raise TemplateError(f"{{{field}:{spec}}}: format does not suit {value!r}") from None
        used.add(field)
    literal = "".join(lit for lit, *_ in _parse(template))
    if template.startswith("/") or re.match(r"^[A-Za-z]:", template):
        raise TemplateError("must be a relative path inside the results folder")
    if any(part in ("..", ".") for part in literal.split("/")) or "/../" in f"/{literal}/":
        raise TemplateError("must not contain '..' or '.' folders")
    if not _strip_ext(template).strip("/"):
        raise TemplateError("gives an empty name")
    return used


def default_template(varied: list[str]) -> str:
    """``seed-{seed}_steps-{steps}_{key}``: readable varying parameters, then the short key."""
    return "_".join([*(f"{name}-{{{name}}}" for name in varied), "{key}"])


def render_output_name(
    spec_or_template: Spec | str,
    job: JobLike,
    *,
    n: int = 1,
    count: int = 1,
    ext: str,
    model: Model | None = None,
    label: str | None = None,
) -> str:
    """The relative POSIX path of output ``n`` of ``count`` of ``job``, safe inside the folder.

    ``model`` is the job's model as the spec has it (its ``map`` among its names; by default the
    registry's), ``label`` its short label, the value of ``{model}`` (by default from its id).
    Raises TemplateError when a format spec does not suit one of this job's values (the spec's
    check tries only one value of each field).
    """
    template = spec_or_template if isinstance(spec_or_template, str) else spec_or_template.filename
    model = model or get_model(job.model_id)
    pieces = []
    skip = False  # the "_" after a field this job's model lacks
    for literal, field, spec, _conversion in _parse(_strip_ext(template)):
        literal = literal.replace("\x00", "_")
        pieces.append(literal[1:] if skip and literal.startswith("_") else literal)
        skip = field is not None and _lacks(field, job, model) and pieces[-1].endswith(f"{field}-")
        if skip:  # `seed-{seed}_` of a model without seed (a sweep of several): left out whole
            pieces[-1] = pieces[-1].removesuffix(f"{field}-")
            continue
        if field is not None:
            value = _template_value(field, job, model, label)
            try:
                text = format(value, spec) if spec else _plain(value)
            except (ValueError, TypeError, OverflowError):
                shown = _shorten(_plain(value))
                raise TemplateError(f"{{{field}:{spec}}}: format does not suit {shown!r}") from None
            pieces.append(sanitise(_shorten(text)))
    parts = [p for p in "".join(pieces).split("/") if p]
    parts = [sanitise(p) for p in parts] or ["_"]
    suffix = f"-{n}" if count > 1 else ""
    # sanitise() strips leading dots, so the dot goes on after it.
    extension = "." + sanitise(ext.lstrip(".")) if ext.lstrip(".") else ""
    parts = [fit_part(p, "") for p in parts[:-1]] + [fit_part(parts[-1], suffix + extension)]
    name = str(PurePosixPath(*parts))
    assert not name.startswith(("/", "..")), name  # sanitise() makes this impossible
    return name


def model_labels(model_ids: list[str]) -> list[str]:
    """Short, distinct labels of model ids, for names and reports: the family and version
    (``wan-3.0``), with the following parts of the id added where two would be the same
    (``seedance-2.5-image-to-video``); ``community/wan-2-2/vace-fun`` is ``wan-2-2``."""
    parts = [m.split("/") for m in model_ids]
    tails = [p[1:] if len(p) > 1 else p for p in parts]
    labels = []
    for tail in tails:
        width = 1
        while width < len(tail) and any(
            other != tail and other[:width] == tail[:width] for other in tails
        ):
            width += 1
        labels.append(sanitise("-".join(tail[:width])))
    if len(set(labels)) == len(labels):
        return labels
    labels = [sanitise(m.replace("/", "-")) for m in model_ids]
    if len(set(labels)) == len(labels):
        return labels
    # Ids that differ only in characters a file name cannot hold (``a:b``, ``a?b``): the id's
    # digest tells them apart, so no two models share a label in names, reports and includes.
    return [
        f"{label}-{hashlib.sha256(m.encode()).hexdigest()[:6]}"
        for label, m in zip(labels, model_ids, strict=True)
    ]


def with_tag(name: str, tag: str) -> str:
    """``name`` (a relative path) with ``_<tag>`` before its extension, still within 255 bytes."""
    folder, _, last = name.rpartition("/")
    match = _EXT.search(last)
    ext = match.group() if match and match.start() > 0 else ""
    stem = last[: len(last) - len(ext)]
    tagged = fit_part(stem, f"_{tag}{ext}")
    return f"{folder}/{tagged}" if folder else tagged


def _lacks(field: str, job: JobLike, model: Model) -> bool:
    """Whether ``field`` is no input of ``job``'s model (another model of the sweep has it)."""
    special = field in SPECIAL_FIELDS or field == MODEL_FIELD
    return not special and model.raw_key(field) is None and field not in job.inputs


def _template_value(field: str, job: JobLike, model: Model, label: str | None) -> Any:
    """What ``{field}`` renders for ``job``: its input's value, an object input (a LoRA) by its
    label (``none`` when left out), ``{model}`` by the model's short label."""
    key = model.raw_key(field)
    if key is None and field == MODEL_FIELD:
        return label or model_labels([job.model_id])[0]
    key = key or field
    value = _field_value(field, job, key)
    if isinstance(value, dict) or (
        key not in job.inputs and objects.is_object_field(model.properties.get(key))
    ):
        return objects.label(value or None)
    return value


def sanitise(text: str) -> str:
    """One safe path part: no separators, control characters, leading dots or reserved names."""
    clean = _UNSAFE.sub("_", text).lstrip(".").rstrip(". ")
    if not clean:
        return "_"
    if clean.split(".")[0].upper() in _RESERVED:
        clean = "_" + clean
    return clean


def _field_value(field: str, job: JobLike, key: str) -> Any:
    if field == "key":
        return job.key[:SHORT_KEY]
    if field == "index":
        return job.index
    if field == "repeat":
        return job.repeat
    if key in job.sources:
        source = job.sources[key]
        if isinstance(source, list):  # a list input: its files' names joined
            return "+".join(PurePosixPath(s.split("?")[0]).stem or "url" for s in source)
        return PurePosixPath(source).stem
    value = job.inputs.get(key, "")
    if isinstance(value, list):
        return "+".join(str(_one_value(v)) for v in value)
    return _one_value(value)


def _one_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:"):
        # Without the job's sources the file name is gone; a content hash still tells files apart.
        return "data-" + hashlib.sha256(value.encode()).hexdigest()[:8]
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return PurePosixPath(value.split("?")[0].split("#")[0]).stem or "url"
    return value


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _shorten(text: str) -> str:
    """A long value cut to a readable prefix plus a hash of the whole, so names stay distinct."""
    if len(text) <= _MAX_VALUE:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: _MAX_VALUE - 10].rstrip()}~{digest}"


def fit_part(part: str, tail: str) -> str:
    """``part + tail`` cut to 255 UTF-8 bytes, keeping the tail and marking the cut with a hash."""
    room = _MAX_PART - len(tail.encode())
    if len(part.encode()) <= room:
        return part + tail
    digest = "~" + hashlib.sha256(part.encode()).hexdigest()[:8]
    cut = part.encode()[: room - len(digest)].decode("utf-8", "ignore")
    return cut + digest + tail


def _strip_ext(template: str) -> str:
    """The template without a trailing literal extension: the output's real type decides it."""
    pieces = list(_parse(template))
    if pieces and pieces[-1][1] is None and _EXT.search(pieces[-1][0]):
        return template[: len(template) - len(_EXT.search(pieces[-1][0]).group())]  # type: ignore[union-attr]
    return template


@lru_cache(maxsize=64)
def _parse(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    try:
        return tuple(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{exc}; write a literal brace as {{{{ or }}}}") from None
