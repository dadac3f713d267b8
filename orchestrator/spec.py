"""The sweep spec: a YAML file read, validated and normalised into a ``Spec`` ready to expand.

Every mistake becomes one ``SpecError`` line: ``<file>:<line>:<col>: <field path>: what is wrong;
what is allowed`` (the line and column come from the YAML node tree), or ``<data file>:<line>:
<field>: ...`` for a fault inside a prompts or rows file. Expansion into jobs lives in ``grid.py``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from orchestrator import naming, objects
from orchestrator.canonical import canonical_json
from orchestrator.errors import SpecError
from orchestrator.models import Model, catalog, get_model, suggest
from orchestrator.settings import RunSettings
from orchestrator.sources import (
    MAX_REQUEST_BYTES,
    TEMPLATE_KEYS,
    LocalImage,
    MediaFiles,
    MediaList,
    Problem,
    bad_scheme,
    check_url,
    expand_glob,
    is_template,
    is_url,
    local_media,
    per_job_groups,
    random_seeds,
    read_lines,
    read_table,
    resolve,
    span,
    text_value,
)
from orchestrator.yamlplaces import Places, brief, dotted, parse_yaml, pydantic_message

__all__ = ["MODEL", "Dimension", "RunSettings", "Spec", "identity", "load_spec"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_SOURCES = ("start", "step", "stop", "count", "from", "file", "glob", "per_job", *TEMPLATE_KEYS)
_ENTRY_KEYS = ("id", "map", "inputs", "axes")
# The name of the model axis, in name templates, include/exclude entries and reports.
MODEL = naming.MODEL_FIELD


class _Line(NamedTuple):
    """A place in a data file (prompts.txt, rows.csv), as opposed to a YAML field path."""

    file: str
    line: int


class _Entry(NamedTuple):
    """One model of the spec: its Model (its map added to its names), its own inputs and axes."""

    model: Model
    inputs: dict[str, Any]
    axes: dict[str, Any]
    place: tuple[str, ...]  # ("model",), or ("model", "2") in a list


class _SpecFile(BaseModel):
    """The YAML file's shape; values inside inputs/axes/zip are checked against the model later."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, pattern=_NAME)
    # An id, or several (an axis named ``model``), each an id or {id, map, inputs, axes}.
    model: Any  # checked by _Builder._entries
    schema_: Literal["local", "server"] = Field("local", alias="schema")
    inputs: dict[str, Any] = {}
    axes: dict[str, Any] = {}
    zip: list[dict[str, Any]] = []
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    repeat: int = Field(1, ge=1, le=1000)
    run: RunSettings = RunSettings()


_TOP_KEYS = [
    "name",
    "model",
    "schema",
    "inputs",
    "axes",
    "zip",
    "include",
    "exclude",
    "repeat",
    "run",
]


@dataclass(frozen=True)
class Dimension:
    """One thing that varies: an axis (one field) or a zip group (fields that vary together)."""

    name: str  # "seed", or "prompt+image" for a zip group
    keys: tuple[str, ...]  # raw keys
    rows: tuple[tuple[Any, ...], ...]  # distinct, normalised; LocalMedia/MediaList for local media
    raw_size: int  # rows before duplicates were collapsed


@dataclass(frozen=True)
class Spec:
    """A validated sweep: what to vary, what is fixed, and how to run it."""

    name: str
    model: str
    path: Path
    base_dir: Path
    run: RunSettings
    definition: Model
    fixed: Mapping[str, Any]  # raw keys, defaults applied, normalised
    dimensions: tuple[Dimension, ...]  # zip groups, then axes in spec order; first is slowest
    include: tuple[Mapping[str, Any], ...]  # each a complete input (fixed merged with the entry)
    exclude: tuple[Mapping[str, Any], ...]  # raw key -> value; a job matching all is dropped
    repeat: int
    filename: str  # the output name template (the spec's or the default)
    # Raw keys of ``fixed`` that come from the model's schema defaults, not from the spec.
    defaulted: frozenset[str] = frozenset()
    # A sweep of several models: one single-model Spec per model, in the order listed (the model
    # axis, slowest). Empty for a sweep of one model, which is its own only part (``each``).
    parts: tuple[Spec, ...] = ()
    label: str = ""  # the model's short label: ``{model}`` in names, reports and exports

    def each(self) -> tuple[Spec, ...]:
        """The single-model parts, in model order: ``parts``, or this spec itself."""
        return self.parts or (self,)

    @property
    def models(self) -> tuple[str, ...]:
        """The model ids of the sweep, in order (one for a single-model spec)."""
        return tuple(part.model for part in self.each())

    @property
    def results_dir(self) -> Path:
        """Where this sweep's outputs and store live: ``<run.output>/<name>``."""
        return self.run.output / self.name

    def with_run(self, **changes: Any) -> Spec:
        """A copy with run settings overridden (``None`` values are ignored), for CLI flags."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        try:
            run = RunSettings.model_validate(self.run.model_dump() | given)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise SpecError(f"--{field.replace('_', '-')}: {pydantic_message(first)}") from None
        parts = tuple(replace(part, run=run) for part in self.parts)
        return replace(self, run=run, parts=parts)


def identity(value: Any) -> Any:
    """A hashable stand-in that equals another exactly when both give the same JSON."""
    if isinstance(value, LocalImage) or value is objects.ABSENT:
        return value
    if isinstance(value, dict):
        return ("object", canonical_json(value))
    return (type(value).__name__, repr(value)) if isinstance(value, float | bool) else value


def load_spec(path: str | Path) -> Spec:
    """Read, validate and normalise a sweep spec; raises SpecError naming the file and place."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder; give a .yaml spec file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    data, where = parse_yaml(path, text)
    return _Builder(path, data, where).build()


class _Builder:
    """Turns the parsed YAML into a Spec, one section at a time, with exact error places."""

    def __init__(self, path: Path, data: dict[str, Any], where: Places) -> None:
        self.several = False  # a sweep of several models (the model axis)
        self.varied: list[str] = []  # the names that vary, over every model read so far
        self.model_names: dict[str, str] = {}  # model id or short label -> model id
        self.all_fields: list[str] = []
        self.path = path
        self.base = path.parent.resolve()
        self.data = data
        self.where = where
        self.media = MediaFiles()

    def build(self) -> Spec:
        raw = self._validate_shape()
        entries = self._entries(raw)
        self.several = len(entries) > 1
        labels = naming.model_labels([e.model.model_id for e in entries])
        self.model_names = {e.model.model_id: e.model.model_id for e in entries}
        self.model_names |= {lab: e.model.model_id for e, lab in zip(entries, labels, strict=True)}
        # A name template may use any model's fields (a job of a model without one shows "").
        self.all_fields = [name for e in entries for name in e.model.field_names()]
        if self.several:
            self._check_kinds(raw, entries)
        parts = []
        for entry, label in zip(entries, labels, strict=True):
            self.model = entry.model
            parts.append(self._part(raw, entry, label))
        if not self.several:
            return parts[0]
        template = self._several_template(raw, parts)
        parts = [replace(part, filename=template) for part in parts]
        first = parts[0]
        return replace(first, filename=template, parts=tuple(parts), label="")

    def _part(self, raw: _SpecFile, entry: _Entry, label: str) -> Spec:
        """The single-model spec of one model: the common sections plus its own."""
        given = self._fields(raw.inputs, ("inputs",), single=True)
        own = self._fields(entry.inputs, (*entry.place, "inputs"), single=True)
        places: dict[str, tuple[str, ...]] = {k: ("inputs", n) for k, (n, _) in given.items()}
        places |= {k: (*entry.place, "inputs", name) for k, (name, _) in own.items()}
        merged = given | own
        fixed = {k: self._norm(k, v, places[k], self.base) for k, (_, v) in merged.items()}
        defaults = {k: self.model.normalise(k, v) for k, v in self.model.defaults().items()}
        placed = self._zips(raw.zip) + self._axes(raw.axes)
        placed += self._axes(entry.axes, (*entry.place, "axes"))
        self._check_disjoint(placed)
        dims = [dim for dim, _ in placed]
        varied = {k for d in dims for k in d.keys}
        missing = [k for k in self.model.required if k not in fixed and k not in varied]
        if missing:
            name = self.model.display_name(missing[0])
            if self.several:
                message = (
                    f"{name}: required input of {self.model.model_id} missing; add it to inputs"
                    " (or to this model's own inputs)"
                )
                raise self.where.error(entry.place, message)
            raise self.where.error(("inputs",), f"{name}: required input missing; add it to inputs")
        base_input = defaults | fixed
        includes = self._mine(raw.include, "include", entry)
        excludes = self._mine(raw.exclude, "exclude", entry)
        include = tuple(self._include(i, e, base_input) for i, e in includes)
        exclude = tuple(self._exclude(i, e) for i, e in excludes)
        name = raw.name or self._default_name()
        run = raw.run.model_copy(update={"output": self._path(raw.run.output, ("run", "output"))})
        template = self._template(raw, dims, base_input)
        return Spec(
            name=name,
            model=self.model.model_id,
            path=self.path,
            base_dir=self.base,
            run=run,
            definition=self.model,
            fixed=base_input,
            dimensions=tuple(dims),
            include=include,
            exclude=exclude,
            repeat=raw.repeat,
            filename=template,
            defaulted=frozenset(defaults) - set(fixed) - varied,
            label=label,
        )

    def _entries(self, raw: _SpecFile) -> list[_Entry]:
        """The models of the spec, each with its map applied and its own inputs and axes."""
        listed = raw.model if isinstance(raw.model, list) else [raw.model]
        if not listed:
            raise self.where.error(("model",), "empty list; give at least one model id")
        if not isinstance(raw.model, str | dict | list):
            message = "must be a model id, a list of them, or {id, map, inputs, axes}, got "
            raise self.where.error(("model",), message + repr(raw.model))
        entries: list[_Entry] = []
        seen: dict[str, tuple[str, ...]] = {}
        for i, item in enumerate(listed):
            place = ("model", str(i)) if isinstance(raw.model, list) else ("model",)
            entry = self._entry(item, place, raw.schema_)
            model_id = entry.model.model_id
            if model_id in seen:
                message = (
                    f"{model_id} is listed twice (first at {dotted(seen[model_id])}); list a "
                    "model once and vary its inputs with axes (its own, for that model only)"
                )
                raise self.where.error(place, message)
            seen[model_id] = place
            entries.append(entry)
        return entries

    def _entry(self, item: Any, place: tuple[str, ...], schema: str) -> _Entry:
        if isinstance(item, str) and item:
            return _Entry(self._model(item, schema, place), {}, {}, place)
        if not isinstance(item, dict):
            raise self.where.error(place, "must be a model id or a mapping {id, map, inputs, axes}")
        for key in item:
            if key not in _ENTRY_KEYS:
                hint = suggest(str(key), list(_ENTRY_KEYS))
                message = f"unknown key{hint}; allowed: {', '.join(_ENTRY_KEYS)}"
                raise self.where.error((*place, key), message, key=True)
        model_id = item.get("id")
        if not isinstance(model_id, str) or not model_id:
            raise self.where.error(place, "id: give the model id, e.g. id: owner/model")
        sections = {}
        for key in ("map", "inputs", "axes"):
            value = item.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise self.where.error((*place, key), "must be a mapping of names")
            sections[key] = value
        model = self._model(model_id, schema, (*place, "id"))
        mapped = self._mapped(model, sections["map"], (*place, "map"))
        return _Entry(mapped, sections["inputs"], sections["axes"], place)

    def _mapped(self, model: Model, names: dict[str, Any], place: tuple[str, ...]) -> Model:
        """``model`` with its ``map`` (common name -> its field) added to its friendly names, so
        the common name reads and shows as that field."""
        if not names:
            return model
        friendly = dict(model.friendly_names)
        for common, target in names.items():
            if not isinstance(target, str):
                raise self.where.error((*place, common), "must name one of this model's inputs")
            key = model.raw_key(target)
            if key is None:
                hint = suggest(target, model.field_names())
                shown = ", ".join(model.friendly_names or model.properties)
                message = f"{model.model_id} has no input {target!r}{hint}; inputs: {shown}"
                raise self.where.error((*place, common), message)
            already = model.raw_key(common) if model.has_schema else None
            if already is not None and already != key:
                message = (
                    f"{common!r} already names {model.model_id}'s input "
                    f"{model.display_name(already)!r}; map another common name onto {target!r}"
                )
                raise self.where.error((*place, common), message, key=True)
            friendly[common] = key
        return replace(model, friendly_names=friendly)

    def _mine(
        self, entries: list[dict[str, Any]], section: str, entry: _Entry
    ) -> list[tuple[int, dict[str, Any]]]:
        """The include/exclude entries of this model, each with its number: those without a
        ``model`` key, and those whose ``model`` names it (its id or short label)."""
        out = []
        for i, given in enumerate(entries):
            if not self.several or MODEL not in given:
                out.append((i, given))
                continue
            wanted = given[MODEL]
            if not isinstance(wanted, str) or wanted not in self.model_names:
                names = list(self.model_names)
                hint = suggest(str(wanted), names)
                message = f"not a model of this sweep{hint}; models: {', '.join(names)}"
                raise self.where.error((section, str(i), MODEL), message)
            if self.model_names[wanted] == entry.model.model_id:
                out.append((i, {k: v for k, v in given.items() if k != MODEL}))
        return out

    def _check_kinds(self, raw: _SpecFile, entries: list[_Entry]) -> None:
        """A common name must mean the same kind of field on every model: an image on one and
        text on another would send a file's name as text."""
        named: list[tuple[str, ...]] = [("inputs", n) for n in raw.inputs]
        named += [("axes", n) for n in raw.axes]
        named += [("zip", str(i), n) for i, g in enumerate(raw.zip) for n in g if n != "file"]
        for place in named:
            kinds = {}
            for entry in entries:
                key = entry.model.raw_key(place[-1])
                if key is not None and entry.model.has_schema:
                    kinds[entry.model.model_id] = entry.model.media_kind(key) or "non-media"
            if len(set(kinds.values())) > 1:
                shown = ", ".join(f"{kind} on {m}" for m, kind in kinds.items())
                message = (
                    f"means different kinds of input ({shown}); give each model its own value "
                    "in its own inputs or axes"
                )
                raise self.where.error(place, message, key=True)

    def _several_template(self, raw: _SpecFile, parts: list[Spec]) -> str:
        """The name template of a sweep of several models: the model's label first by default;
        a given one must tell jobs apart within each model, and models apart."""
        if raw.run.filename is None:
            return naming.default_template(list(dict.fromkeys([MODEL, *self.varied])))
        template = raw.run.filename
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        if not used & {MODEL, "key", "index"}:
            message = f"names would repeat across models: add {{{MODEL}}} or {{key}}"
            raise self.where.error(("run", "filename"), message)
        return template

    def _validate_shape(self) -> _SpecFile:
        try:
            return _SpecFile.model_validate(self.data)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = tuple(first["loc"])
            if first["type"] == "extra_forbidden":
                allowed = _TOP_KEYS if len(loc) == 1 else list(RunSettings.model_fields)
                hint = suggest(str(loc[-1]), allowed)
                message = f"unknown key{hint}; allowed: {', '.join(allowed)}"
                raise self.where.error(loc, message, key=True) from None
            if loc and loc[-1] == "[key]":
                message = f"keys must be names (text), got {loc[-2]!r}"
                raise self.where.error(loc[:-1], message, key=True) from None
            if first["type"] == "missing":
                raise self.where.error(loc[:-1], f"{loc[-1]}: required key missing") from None
            if first["type"] == "string_pattern_mismatch" and loc == ("name",):
                message = "must be a folder name: letters, digits, '.', '_' and '-'"
                raise self.where.error(loc, f"{message}, got {first['input']!r}") from None
            raise self.where.error(loc, pydantic_message(first)) from None

    def _path(self, written: Path, place: tuple[str, ...]) -> Path:
        try:
            return resolve(self.base, str(written))
        except Problem as exc:
            raise self.where.error(place, exc.message) from None

    def _model(self, model_id: str, schema: str, place: tuple[str, ...]) -> Model:
        if not catalog.usable_id(model_id):
            message = (
                f"{brief(model_id)} is not a model id (segments of letters, digits, '.', '_' "
                "and '-' separated by '/', such as owner/model)"
            )
            raise self.where.error(place, message)
        if schema == "server":
            return get_model(model_id)
        try:
            return get_model(model_id, strict=True)
        except SpecError as exc:
            message = f"{exc} (or set schema: server to skip local validation)"
            raise self.where.error(place, message) from None

    def _fields(
        self, mapping: Mapping[str, Any], path: tuple[str, ...], *, single: bool
    ) -> dict[str, tuple[str, Any]]:
        """Friendly or raw names -> raw key: (name as written, value), rejecting unknown names.

        ``single``: each value must be one value (inputs, include, exclude), not a list of them.
        """
        out: dict[str, tuple[str, Any]] = {}
        for name, value in mapping.items():
            key = self.model.raw_key(name)
            if key is None:
                hint = suggest(name, self.model.field_names())
                allowed = ", ".join(self.model.friendly_names or self.model.properties)
                message = f"unknown input{hint}; inputs: {allowed}"
                if self.several and path[0] in ("include", "exclude"):
                    message = (
                        f"{self.model.model_id} has no input {name!r}{hint}; map it "
                        f"(map: {{{name}: <its field>}} under that model) or name the model "
                        f"this entry is for ({MODEL}: <id or label>)"
                    )
                elif self.several and path[0] != "model":
                    message = (
                        f"{self.model.model_id} has no input {name!r}{hint}; map it "
                        f"(map: {{{name}: <its field>}} under that model) or move {name!r} into "
                        "the own inputs/axes of the models that have it"
                    )
                raise self.where.error((*path, name), message, key=True)
            if key in out:
                other = out[key][0]
                message = f"names the same input as {other!r}; give it once"
                raise self.where.error((*path, name), message, key=True)
            if single and isinstance(value, dict | list) and not self._one_value(key, value):
                message = "takes one value; to vary it, move it under axes or zip"
                raise self.where.error((*path, name), message)
            out[key] = (name, value)
        return out

    def _one_value(self, key: str, value: Any) -> bool:
        """Whether ``value`` is one value of ``key``: a list for a list-typed input, a mapping
        for an object input (a LoRA)."""
        if isinstance(value, dict):  # schema: server knows no field's type: the server checks
            prop = self.model.properties.get(key)
            return objects.is_object_field(prop) or not self.model.has_schema
        if not isinstance(value, list):
            return False
        kind = self.model.properties.get(key, {}).get("type")
        return key in self.model.media_lists or kind == "array"

    def _norm(self, key: str, value: Any, place: Any, base: Path) -> Any:
        """One value checked against the schema and normalised; local media become LocalMedia,
        a media list a MediaList, another list a tuple (hashable, like every grid value)."""
        name = self.model.display_name(key)
        prop = self.model.properties.get(key)
        try:
            if objects.is_object_field(prop):
                return self._object(key, value, place, prop or {})
            kind = self.model.media_kind(key)
            if kind is not None and key in self.model.media_lists:
                return self._media_list(key, kind, value, base)
            if kind is not None:
                if isinstance(value, list):
                    raise Problem(f"takes one {kind} file or https URL, not a list")
                value = self._one_media(kind, value, base)
                if not isinstance(value, str):
                    return value
            problem = self.model.check(key, value)
            if problem is not None:
                raise Problem(problem.message)
            normal = self.model.normalise(key, value)
            if not isinstance(normal, list) or not self._one_value(key, normal):
                return normal
            if any(isinstance(item, dict | list) for item in normal):
                raise Problem("each item of the list must be a single value")
            return tuple(normal)
        except Problem as exc:
            raise self._fail(place, name, exc) from None

    def _object(self, key: str, value: Any, place: Any, prop: Mapping[str, Any]) -> Any:
        """A mapping for an object field (a LoRA), or ABSENT for ``none`` outside ``inputs``."""
        if objects.is_absent(value):
            if isinstance(place, tuple) and place[:1] == ("inputs",):
                raise Problem("none leaves the field out; remove it from inputs instead")
            if key in self.model.required:
                raise Problem("none would leave out a required input; give a mapping")
            return objects.ABSENT
        try:
            return objects.normalise_object(prop, value)
        except objects.ObjectProblem as exc:
            raise Problem(exc.message) from None

    def _media_list(self, key: str, kind: str, value: Any, base: Path) -> MediaList:
        """A list input's value: each item a local file (checked) or an https URL."""
        if not isinstance(value, list):
            raise Problem(
                f"takes a list of {kind} files or https URLs, such as [a.png, b.png]; "
                "in an axis, each value is such a list"
            )
        limit = self.model.max_items(key)
        if limit is not None and len(value) > limit:
            raise Problem(
                f"lists {len(value)} {kind}s; the model takes at most {limit} (its maxItems)"
            )
        items = MediaList(self._one_media(kind, item, base) for item in value)
        problem = self.model.check(key, items.labels())
        if problem is not None:
            raise Problem(problem.message)
        size = items.uri_length()
        if size > MAX_REQUEST_BYTES:
            raise Problem(
                f"{', '.join(items.labels())} make {size / 2**20:.1f} MiB as data: URIs, above "
                f"the {MAX_REQUEST_BYTES // 2**20} MiB limit of a request; host some at public "
                "https URLs instead"
            )
        return items

    def _one_media(self, kind: str, value: Any, base: Path) -> Any:
        """One media value: an https URL or data: URI as it is, a local file as LocalMedia."""
        if not isinstance(value, str):
            raise Problem(
                f"must be the path of {'an' if kind[0] in 'aeiou' else 'a'} {kind} file or an "
                f"https URL, got {brief(value)}"
            )
        scheme = bad_scheme(value)
        if scheme is not None:
            raise Problem(
                f"{brief(value)}: {scheme}:// URLs are not sent; give an https URL or a local file"
            )
        if is_url(value):
            check_url(value, kind)
            return value
        return local_media(value, base, self.base, self.media, kind)

    def _fail(self, place: Any, name: str, exc: Problem) -> SpecError:
        if exc.file is not None:
            return SpecError(f"{exc.file}:{exc.line}: {name}: {exc.message}")
        if isinstance(place, _Line):
            return SpecError(f"{place.file}:{place.line}: {name}: {exc.message}")
        return self.where.error(place, exc.message)

    def _axes(
        self, axes: Mapping[str, Any], at: tuple[str, ...] = ("axes",)
    ) -> list[tuple[Dimension, tuple[str, ...]]]:
        dims: list[tuple[Dimension, tuple[str, ...]]] = []
        for key, (name, source) in self._fields(axes, at, single=False).items():
            values = self._source(key, source, (*at, name))
            rows = _distinct([(v,) for v in values])
            dim = Dimension(self.model.display_name(key), (key,), rows, len(values))
            dims.append((dim, (*at, name)))
        return dims

    def _zips(self, groups: list[dict[str, Any]]) -> list[tuple[Dimension, tuple[str, ...]]]:
        dims: list[tuple[Dimension, tuple[str, ...]]] = []
        for i, group in enumerate(groups):
            path = ("zip", str(i))
            if not group:
                raise self.where.error(path, "empty zip group; give fields with equal-length lists")
            if set(group) == {"file"} and isinstance(group["file"], str):
                keys, rows = self._table(group["file"], (*path, "file"))
            else:
                fields = self._fields(group, path, single=False)
                keys = tuple(fields)
                columns = [self._source(k, src, (*path, n)) for k, (n, src) in fields.items()]
                sizes = {
                    self.model.display_name(k): len(c) for k, c in zip(keys, columns, strict=True)
                }
                if len(set(sizes.values())) > 1:
                    shown = ", ".join(f"{n} has {s}" for n, s in sizes.items())
                    raise self.where.error(
                        path, f"lists differ in length: {shown}; make them equal"
                    )
                rows = list(zip(*columns, strict=True))
            name = "+".join(self.model.display_name(k) for k in keys)
            dims.append((Dimension(name, keys, _distinct(rows), len(rows)), path))
        return dims

    def _table(
        self, file: str, path: tuple[str, ...]
    ) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        try:
            table = resolve(self.base, file)
            label = _rel(table, self.base, file)
            columns, rows = read_table(table, label)
        except Problem as exc:
            raise self._fail(path, "file", exc) from None
        keys = []
        for column in columns:
            key = self.model.raw_key(column)
            if key is None or key in keys:
                why = (
                    "repeats a column"
                    if key
                    else f"unknown input{suggest(column, self.model.field_names())}"
                )
                raise SpecError(f"{label}:1: {column}: {why}")
            keys.append(key)
        out = []
        for cells, line in rows:
            values = []
            for key, cell in zip(keys, cells, strict=True):
                value = cell
                if isinstance(cell, str):
                    value = self._typed(key, cell, _Line(label, line))
                values.append(self._norm(key, value, _Line(label, line), table.parent))
            out.append(tuple(values))
        return tuple(keys), out

    def _typed(self, key: str, text: str, place: _Line) -> Any:
        kind = str(self.model.properties.get(key, {}).get("type", ""))
        if kind == "object":
            return text  # only "none" fits; _norm says so
        try:
            return text_value("number" if kind == "float" else kind, text)
        except Problem as exc:
            raise self._fail(place, self.model.display_name(key), exc) from None

    def _source(self, key: str, source: Any, path: tuple[str, ...]) -> list[Any]:
        """The normalised values an axis or zip field lists, in order, duplicates kept."""
        if isinstance(source, list):
            return self._listed(key, source, path)
        if not isinstance(source, dict):
            message = (
                "must be a list, {start, stop, step}, {count, from}, {file}, {glob} or {template}; "
                "for one fixed value, use inputs"
            )
            raise self.where.error(path, message)
        for k in source:
            if k not in _SOURCES:
                hint = suggest(str(k), list(_SOURCES))
                message = (
                    f"unknown key{hint}; allowed: start/stop/step, count/from, file, "
                    "glob (with per_job), template (with template_file, wildcards, sample, seed)"
                )
                raise self.where.error((*path, k), message, key=True)
        try:
            raw = self._generated(key, source, path)
            folder = resolve(self.base, source["file"]).parent if "file" in source else self.base
        except Problem as exc:
            raise self._fail(path, self.model.display_name(key), exc) from None
        return [self._norm(key, v, place, folder) for v, place in raw]

    def _listed(self, key: str, source: list[Any], path: tuple[str, ...]) -> list[Any]:
        if not source:
            raise self.where.error(path, "empty axis; give at least one value")
        for i, item in enumerate(source):
            if isinstance(item, dict | list) and not self._one_value(key, item):
                raise self.where.error((*path, str(i)), "must be a single value")
        return [self._norm(key, v, (*path, str(i)), self.base) for i, v in enumerate(source)]

    def _generated(
        self, key: str, source: dict[str, Any], path: tuple[str, ...]
    ) -> list[tuple[Any, Any]]:
        """A range, seeds, a file's lines or a glob's files, each with its place; or a Problem."""
        shape = frozenset(source)
        if is_template(source):
            kind = str(self.model.properties.get(key, {}).get("type", "string"))
            if self.model.has_schema and kind != "string":
                raise Problem("template makes text, so it suits text inputs only")
            from orchestrator import templates  # dynamicprompts: only for a spec with a template

            return [(v, path) for v in templates.expand(source, self.base)]
        if shape == {"start", "stop", "step"}:
            return [(v, path) for v in span(**source)]
        if shape in ({"count"}, {"count", "from"}):
            return [(v, path) for v in random_seeds(source["count"], source.get("from", 0))]
        if shape == {"file"}:
            return self._lines(key, source["file"], path)
        if shape in ({"glob"}, {"glob", "per_job"}):
            return [(v, path) for v in self._globbed(key, source)]
        raise Problem(
            "give start, stop and step together, count (with from), file, glob (with per_job) "
            "or template; "
            f"got {', '.join(sorted(shape))}"
        )

    def _globbed(self, key: str, source: dict[str, Any]) -> list[Any]:
        """A glob's files, one a job; or for a list input, ``per_job`` files a job."""
        if key not in self.model.media_inputs:
            media = ", ".join(self.model.display_name(k) for k in self.model.media_inputs)
            raise Problem(f"glob lists files, so it suits media inputs only ({media})")
        pattern = source["glob"]
        if not isinstance(pattern, str):
            raise Problem("glob must be a pattern such as images/*.png")
        files = expand_glob(pattern, self.base)
        if key in self.model.media_lists:
            if "per_job" not in source:
                raise Problem(
                    "takes a list of files a job: add per_job, the files each job gets, "
                    f"as in {{glob: {pattern!r}, per_job: 3}}"
                )
            limit, per_job = self.model.max_items(key), source["per_job"]
            if limit is not None and isinstance(per_job, int) and per_job > limit:
                raise Problem(f"per_job {per_job} is above the {limit} files the model takes")
            return per_job_groups(files, per_job, pattern)
        if "per_job" in source:
            raise Problem("per_job groups files for a list input; this input takes one file a job")
        return list(files)

    def _lines(self, key: str, file: Any, path: tuple[str, ...]) -> list[tuple[Any, Any]]:
        if not isinstance(file, str):
            raise Problem("file must be a path such as prompts.txt")
        resolved = resolve(self.base, file)
        label = _rel(resolved, self.base, file)
        return [
            (self._typed(key, text, _Line(label, n)), _Line(label, n))
            for text, n in read_lines(resolved, label)
        ]

    def _check_disjoint(self, placed: list[tuple[Dimension, tuple[str, ...]]]) -> None:
        """A field varies in one place only: two sources for it would make the grid ambiguous."""
        owner: dict[str, str] = {}
        for dim, path in placed:
            for key in dim.keys:
                if key in owner:
                    name = self.model.display_name(key)
                    message = (
                        f"{name} already varies in {owner[key]}; a field may vary in one place"
                    )
                    raise self.where.error(path, message)
                owner[key] = dotted(path)

    def _include(
        self, i: int, entry: Mapping[str, Any], base_input: Mapping[str, Any]
    ) -> dict[str, Any]:
        path = ("include", str(i))
        if not entry:
            raise self.where.error(path, "empty include entry; give the inputs of one combination")
        given = self._fields(entry, path, single=True)
        values = {k: self._norm(k, v, (*path, n), self.base) for k, (n, v) in given.items()}
        combined = dict(base_input) | values
        missing = [k for k in self.model.required if k not in combined]
        if missing:
            name = self.model.display_name(missing[0])
            raise self.where.error(
                path, f"{name}: required input missing; add it here or to inputs"
            )
        return combined

    def _exclude(self, i: int, entry: Mapping[str, Any]) -> dict[str, Any]:
        path = ("exclude", str(i))
        if not entry:
            raise self.where.error(path, "empty exclude rule; give the values a dropped job has")
        given = self._fields(entry, path, single=True)
        return {k: self._norm(k, v, (*path, n), self.base) for k, (n, v) in given.items()}

    def _template(
        self, raw: _SpecFile, dims: list[Dimension], base_input: Mapping[str, Any]
    ) -> str:
        """The output name template; a given one must tell every pair of jobs apart."""
        groups = [d.keys for d in dims]
        groups += [tuple(k for k in map(self.model.raw_key, e) if k) for e in raw.include]
        if raw.repeat > 1:
            groups.append(("repeat",))
        varied = list(dict.fromkeys(self.model.display_name(k) for g in groups for k in g))
        self.varied += varied
        if raw.run.filename is None:
            return naming.default_template(varied)
        sample = dict(base_input) | {
            k: v for d in dims for k, v in zip(d.keys, d.rows[0], strict=True)
        }
        samples = {self.model.display_name(k): _sample(v) for k, v in sample.items()}
        fields = [*self.model.field_names(), *samples, *self.all_fields, MODEL]
        fields = list(dict.fromkeys(fields))
        try:
            used = naming.validate_template(raw.run.filename, fields, samples)
        except naming.TemplateError as exc:
            raise self.where.error(("run", "filename"), str(exc)) from None
        used_keys = {self.model.raw_key(f) or f for f in used}
        uncovered = [g for g in groups if g and not used_keys & set(g)]
        if uncovered and not used & {"key", "index"}:
            names = list(dict.fromkeys(self.model.display_name(g[0]) for g in uncovered))
            message = (
                f"names would repeat across jobs: add {{key}} or {{{names[0]}}}"
                f" (varying but not in the name: {', '.join(names)})"
            )
            raise self.where.error(("run", "filename"), message)
        return raw.run.filename

    def _default_name(self) -> str:
        stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in self.path.stem)
        return stem.lstrip("._-")[:100] or "sweep"


def _sample(value: Any) -> Any:
    if isinstance(value, dict) or value is objects.ABSENT:
        return objects.label(value)
    if isinstance(value, MediaList):  # as naming shows it: its files' names joined
        return "+".join(
            Path(v.label).stem if isinstance(v, LocalImage) else Path(v.split("?")[0]).stem
            for v in value
        )
    if isinstance(value, LocalImage):
        return Path(value.label).stem
    return value


def _distinct(rows: list[tuple[Any, ...]]) -> tuple[tuple[Any, ...], ...]:
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        seen.setdefault(tuple(identity(v) for v in row), row)
    return tuple(seen.values())


def _rel(path: Path, base: Path, written: str) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return written
