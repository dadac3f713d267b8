"""The model registry: each model's input schema, friendly names and input validation.

A model is one JSON file in this folder: RunComfy's published schema (``input_schema``,
``output_schema``) plus ``friendly_names`` (friendly name -> raw ComfyUI node-id key) and
``media_inputs`` (the raw keys that take an image or video URL). Adding a model is adding a file.
A catalog entry (``GET /v1/models/{id}``) becomes a Model through ``Model.from_catalog``: its media
inputs are the fields whose ``format`` says so (``image_uri``, ``image_uris``, ``video_uri(s)``,
``audio_uri(s)``; the plural forms are lists), its output kind comes from its categories.

RunComfy's schemas say ``"type": "float"``, which is not JSON Schema: it means a JSON number, and a
float field's ``4`` and ``4.0`` are the same value. An integer field's ``4.0`` is a type error.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from orchestrator import objects
from orchestrator.errors import InputError, SpecError

if TYPE_CHECKING:  # jsonschema loads when a value is first checked: `status` never checks one
    import jsonschema

__all__ = [
    "MEDIA_FORMATS",
    "OUTPUT_KINDS",
    "FieldProblem",
    "Model",
    "get_model",
    "known_models",
    "output_kind_of",
    "suggest",
]

# A schema field's ``format`` -> (media kind, takes a list). RunComfy marks media inputs so.
MEDIA_FORMATS: Mapping[str, tuple[str, bool]] = {
    "image_uri": ("image", False),
    "image_uris": ("image", True),
    "video_uri": ("video", False),
    "video_uris": ("video", True),
    "audio_uri": ("audio", False),
    "audio_uris": ("audio", True),
}
OUTPUT_KINDS = ("video", "image", "audio")


@dataclass(frozen=True)
class FieldProblem:
    """One input field that does not fit the schema."""

    key: str
    name: str
    message: str
    kind: str  # missing | unknown | type | enum | range | invalid

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass(frozen=True)
class Model:
    """A model the registry knows, or an unknown one that is validated only by the server."""

    model_id: str
    summary: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Mapping[str, Any] = field(default_factory=dict)
    friendly_names: Mapping[str, str] = field(default_factory=dict)
    media_inputs: frozenset[str] = frozenset()
    # What the model makes: "video", "image" or "audio".
    output_kind: str = "video"
    # Raw key -> "image" | "video" | "audio" for each media input (a key absent here is an image).
    media_kinds: Mapping[str, str] = field(default_factory=dict)
    # The media inputs that take a list of URLs (format image_uris, video_uris, audio_uris).
    media_lists: frozenset[str] = frozenset()
    display: str = ""  # the catalog's display_name
    _names: dict[str, str] = field(  # raw key -> friendly name, filled on first use
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _validators: dict[str, jsonschema.Draft7Validator] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @classmethod
    def from_catalog(cls, entry: Mapping[str, Any]) -> Model:
        """A Model from a catalog entry (``GET /v1/models/{id}`` with its input schema).

        Media inputs are read from each field's ``format``; the output kind from an ``output``
        key when the entry has one, else from its categories, else its output schema."""
        schema: Mapping[str, Any] = entry.get("input_schema") or {}
        kinds: dict[str, str] = {}
        lists: set[str] = set()
        for key, prop in (schema.get("properties") or {}).items():
            media = (
                MEDIA_FORMATS.get(str(prop.get("format", ""))) if isinstance(prop, dict) else None
            )
            if media is None:
                items = prop.get("items") if isinstance(prop, dict) else None
                if isinstance(items, dict):
                    single = MEDIA_FORMATS.get(str(items.get("format", "")))
                    media = (single[0], True) if single else None
            if media is not None:
                kinds[key] = media[0]
                if media[1]:
                    lists.add(key)
        return cls(
            model_id=str(entry["model_id"]),
            summary=str(entry.get("description") or entry.get("display_name") or ""),
            input_schema=schema,
            output_schema=entry.get("output_schema") or {},
            friendly_names=entry.get("friendly_names") or {},
            media_inputs=frozenset(kinds),
            output_kind=output_kind_of(entry),
            media_kinds=kinds,
            media_lists=frozenset(lists),
            display=str(entry.get("display_name") or ""),
        )

    def media_kind(self, key: str) -> str | None:
        """ "image", "video" or "audio" for a media input's raw key; None for any other key."""
        if key not in self.media_inputs:
            return None
        return self.media_kinds.get(key, "image")

    def max_items(self, key: str) -> int | None:
        """The schema's ``maxItems`` of a list input, or None."""
        value = self.properties.get(key, {}).get("maxItems")
        return value if isinstance(value, int) else None

    @property
    def has_schema(self) -> bool:
        return bool(self.input_schema.get("properties"))

    @property
    def properties(self) -> Mapping[str, Mapping[str, Any]]:
        props: Mapping[str, Mapping[str, Any]] = self.input_schema.get("properties", {})
        return props

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.input_schema.get("required", ()))

    def raw_key(self, name: str) -> str | None:
        """The raw key for a friendly name or a raw key; None if the schema knows neither."""
        if name in self.friendly_names:
            return self.friendly_names[name]
        if name in self.properties or not self.has_schema:
            return name
        return None

    def display_name(self, key: str) -> str:
        """The friendly name of a raw key, or the key itself."""
        names = self._names
        if not names and self.friendly_names:
            names.update({raw: name for name, raw in self.friendly_names.items()})
        return names.get(key, key)

    def shown_inputs(
        self, inputs: Mapping[str, Any], sources: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Inputs as a person reads them: by friendly name, a local file by the name the spec
        gave it (``sources``), another data: URI as its type and size."""
        files = sources or {}
        return {self.display_name(k): files.get(k, _shorten(v)) for k, v in inputs.items()}

    def in_order(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``inputs`` (by raw key) in the model's order of friendly names, then the rest."""
        order = {raw: i for i, raw in enumerate(self.friendly_names.values())}
        return {k: inputs[k] for k in sorted(inputs, key=lambda k: (order.get(k, len(order)), k))}

    def field_names(self) -> list[str]:
        """Every name a spec may use for this model: friendly names first, then raw keys."""
        return [*self.friendly_names, *self.properties]

    def defaults(self) -> dict[str, Any]:
        """The schema's default for each raw key that has one."""
        return {k: p["default"] for k, p in self.properties.items() if "default" in p}

    def normalise(self, key: str, value: Any) -> Any:
        """``value`` made canonical for raw ``key`` (floats for float fields); raises InputError."""
        problem = self.check(key, value)
        if problem is not None:
            raise InputError(str(problem), field=problem.name)
        kind = _schema_type(self.properties.get(key, {}))
        if kind == "number":
            return float(value)
        if kind == "object":
            return objects.normalise_object(self.properties[key], value)
        return value

    def check(self, key: str, value: Any) -> FieldProblem | None:
        """The problem with ``value`` for raw ``key``, or None when it fits."""
        name = self.display_name(key)
        if not self.has_schema:
            return None
        prop = self.properties.get(key)
        if prop is None:
            hint = suggest(name, self.field_names())
            return FieldProblem(key, name, f"unknown input{hint}", "unknown")
        kind = _schema_type(prop)
        if kind == "object":
            try:
                objects.normalise_object(prop, value)
            except objects.ObjectProblem as exc:
                return FieldProblem(key, name, exc.message, "invalid")
            return None
        problem = _check_type(kind, value)
        if problem:
            return FieldProblem(key, name, f"{problem}, got {_show(value)}", "type")
        from jsonschema.exceptions import best_match

        error = best_match(
            self._validator(key).iter_errors(float(value) if kind == "number" else value)
        )
        if error is None:
            return None
        if error.validator == "enum":
            allowed = ", ".join(_show(v) for v in prop["enum"])
            hint = suggest(str(value), [str(v) for v in prop["enum"]]) if kind == "string" else ""
            return FieldProblem(
                key, name, f"{_show(value)} is not allowed{hint}; allowed: {allowed}", "enum"
            )
        if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            low, high = prop.get("minimum", "-inf"), prop.get("maximum", "inf")
            return FieldProblem(
                key, name, f"must be between {low} and {high}, got {_show(value)}", "range"
            )
        return FieldProblem(key, name, error.message, "invalid")

    def _validator(self, key: str) -> jsonschema.Draft7Validator:
        """A validator of one field's value constraints, built once (it costs ~20 us each time)."""
        cached = self._validators.get(key)
        if cached is None:
            prop = self.properties[key]
            subschema = {k: v for k, v in prop.items() if k not in ("type", "default")}
            from jsonschema import Draft7Validator

            cached = self._validators[key] = Draft7Validator(subschema)
        return cached

    def problems(self, inputs: Mapping[str, Any]) -> list[FieldProblem]:
        """Every problem with a complete input object keyed by raw keys (the emulator's 422)."""
        found = [p for k, v in inputs.items() if (p := self.check(k, v)) is not None]
        found += [
            FieldProblem(k, self.display_name(k), "is required", "missing")
            for k in self.required
            if k not in inputs
        ]
        return found

    def complete(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Raw-keyed, normalised input with the schema's defaults applied; raises InputError."""
        given: dict[str, Any] = {}
        for name, value in inputs.items():
            key = self.raw_key(name)
            if key is None:
                hint = suggest(name, self.field_names())
                raise InputError(f"{name}: unknown input{hint}", field=name)
            given[key] = self.normalise(key, value)
        # Required means the user gives it, even where the schema shows an example default.
        missing = [self.display_name(k) for k in self.required if k not in given]
        if missing:
            raise InputError(f"{', '.join(missing)}: required input missing", field=missing[0])
        defaults = {k: self.normalise(k, v) for k, v in self.defaults().items()}
        return defaults | given


def get_model(model_id: str, *, strict: bool = False) -> Model:
    """The shipped model, else the one the catalog cache in force lists (``models/catalog.py``),
    else (unless ``strict``) any source's cached entry or a schema-less model the server checks.

    ``strict`` (a spec's validation) raises one line naming ``comfysweep models sync`` and the
    nearest known ids."""
    model = _registry().get(model_id)
    if model is not None:
        return model
    from orchestrator.models import catalog

    if strict:
        model = catalog.lookup(model_id)
        if model is None:
            message = catalog.unknown_message(model_id, list(_registry()))
            raise SpecError(message, field="model")
        return model
    return catalog.lookup_anywhere(model_id) or Model(model_id=model_id)


def known_models() -> list[Model]:
    """Every model that ships a schema with comfysweep."""
    return list(_registry().values())


def output_kind_of(entry: Mapping[str, Any]) -> str:
    """What a catalog entry's model makes: its ``output`` key, else its categories (``video``,
    ``text-to-image``...), else its output schema's media keys; "video" when nothing says."""
    given = entry.get("output")
    if given in OUTPUT_KINDS:
        return str(given)
    words = " ".join(str(c) for c in entry.get("categories") or ())
    for kind in ("video", "image", "audio"):
        if re.search(rf"(^|[\s-]){kind}($|\s)", words):
            return kind
    props = (entry.get("output_schema") or {}).get("properties") or {}
    for kind in OUTPUT_KINDS:
        if kind in props or f"{kind}s" in props:
            return kind
    return "video"


def suggest(word: str, choices: list[str]) -> str:
    """A ``" (did you mean 'x'?)"`` hint, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@cache
def _registry() -> dict[str, Model]:
    models = {}
    for entry in _model_files():
        data = json.loads(entry)
        model = Model(
            model_id=data["model_id"],
            summary=data.get("summary", ""),
            input_schema=data.get("input_schema", {}),
            output_schema=data.get("output_schema", {}),
            friendly_names=data.get("friendly_names", {}),
            media_inputs=frozenset(data.get("media_inputs", ())),
            output_kind=data.get("output", "video"),
            display=data.get("display_name", ""),
        )
        models[model.model_id] = model
    return models


def _model_files() -> Iterator[str]:
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            yield entry.read_text(encoding="utf-8")


def _schema_type(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type", "")
    return "number" if kind == "float" else str(kind)


def _check_type(kind: str, value: Any) -> str | None:
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be a whole number"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return "must be a finite number"
        return None if ok else "must be a number"
    if kind == "string":
        return None if isinstance(value, str) else "must be a string"
    if kind == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    return None


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _shorten(value: Any) -> Any:
    """A data: URI as its type and size (each of a list's); anything else as it is."""
    if isinstance(value, list):
        return [_shorten(item) for item in value]
    if isinstance(value, str) and value.startswith("data:") and len(value) > 64:
        return f"{value.split(',', 1)[0]},… ({len(value):,} chars)"
    return value
