"""The model catalog as the Model API publishes it, with the emulator's own prices.

The emulator serves vace-fun (its schema ships in orchestrator/models) plus the models of
``catalog.json`` beside this file: real RunComfy endpoints' ids, display names, input schemas and
output kinds, copied verbatim from their published catalog (``"type": "float"`` and all). The
categories, descriptions and prices are the emulator's, except where RunComfy publishes a price
(``price_published``). The LoRA bases' schemas gain RunComfy's ``lora`` object input; every other
model lacks it and so refuses it (422001), as a real endpoint whose schema lacks a field would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from orchestrator.emulator.farm import PRICE_UNIT, PRICE_USD_PER_SECOND
from orchestrator.models import Model, known_models

__all__ = [
    "LORA_INPUT",
    "PRICING_NOTE",
    "Offer",
    "catalog_entry",
    "categories",
    "emulated_catalog",
    "list_models",
]

PRICING_NOTE = (
    "Emulator price, not RunComfy's: {price} USD per second of output video (frames / fps), "
    "billed when the job ends. Read the real price from RunComfy's catalog."
)
_UNITS = {"second": "second of output", "output": "output"}
_NOTE_OWN = (
    "Emulator price, not RunComfy's: {price:g} USD per {unit}, billed when the job ends. "
    "Read the real price from RunComfy's catalog."
)
_NOTE_PUBLISHED = (
    "RunComfy's published price, charged by the emulator: {price:g} USD per {unit}, "
    "billed when the job ends."
)
_LORA_NOTE = " LoRA base: takes a trained LoRA as the lora input, billed per request."

# RunComfy's LoRA input (docs: model-apis/async-queue-endpoints, "LoRA Inputs").
LORA_INPUT: Mapping[str, Any] = {
    "type": "object",
    "description": "a trained LoRA of this base model: its asset name or a public https URL",
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "scale": {"type": "number", "minimum": 0, "maximum": 2, "default": 1.0},
    },
    "required": ["path"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Offer:
    """One model the emulator serves: its schema (as a Model) and what the catalog says of it."""

    model: Model
    display_name: str
    description: str
    categories: tuple[str, ...]
    base_price_usd: float
    price_unit: str  # "second" (of output video or audio) or "output" (an image)
    pricing_note: str
    lora_base: bool = False

    @property
    def model_id(self) -> str:
        return self.model.model_id


def categories(model: Model) -> list[str]:
    """The catalog categories of a registry model (the registry has none: from its inputs)."""
    return ["image-to-video", "video"] if model.media_inputs else ["text-to-video", "video"]


@cache
def emulated_catalog() -> dict[str, Offer]:
    """Every model the emulator serves, by id: the registry's (vace-fun) first, then the file's."""
    offers = {
        m.model_id: Offer(
            model=m,
            display_name=m.summary or m.model_id,
            description=m.summary,
            categories=tuple(categories(m)),
            base_price_usd=PRICE_USD_PER_SECOND,
            price_unit=PRICE_UNIT,
            pricing_note=PRICING_NOTE.format(price=PRICE_USD_PER_SECOND),
        )
        for m in known_models()
    }
    text = resources.files(__package__ or __name__).joinpath("catalog.json").read_text("utf-8")
    for entry in json.loads(text)["models"]:
        offer = _offer(entry)
        offers[offer.model_id] = offer
    return offers


def _offer(entry: Mapping[str, Any]) -> Offer:
    schema = json.loads(json.dumps(entry["input_schema"]))  # a copy this offer owns
    lora = bool(entry.get("lora_base"))
    if lora:
        schema["properties"]["lora"] = dict(LORA_INPUT)
    price, unit = float(entry["base_price_usd"]), str(entry["price_unit"])
    note = (_NOTE_PUBLISHED if entry.get("price_published") else _NOTE_OWN).format(
        price=price, unit=_UNITS[unit]
    )
    return Offer(
        model=Model.from_catalog({**entry, "input_schema": schema}),
        display_name=str(entry["display_name"]),
        description=str(entry.get("description", "")),
        categories=tuple(entry["categories"]),
        base_price_usd=price,
        price_unit=unit,
        pricing_note=note + (_LORA_NOTE if lora else ""),
        lora_base=lora,
    )


def catalog_entry(offer: Offer, *, schema: bool) -> dict[str, Any]:
    """``GET /v1/models/{model_id}``'s document; ``schema`` adds the input and output schemas."""
    model = offer.model
    entry: dict[str, Any] = {
        "model_id": model.model_id,
        "display_name": offer.display_name,
        "description": offer.description,
        "categories": list(offer.categories),
        "kind": "model",
        "model_url": f"https://www.runcomfy.com/models/{model.model_id}",
    }
    if schema:
        entry["input_schema"] = dict(model.input_schema)
        entry["output_schema"] = dict(model.output_schema) or _output_schema(model.output_kind)
    entry["inputs"] = list(model.properties)
    entry["required_inputs"] = list(model.required)
    entry["base_price_usd"] = offer.base_price_usd
    entry["price_unit"] = offer.price_unit
    entry["pricing_note"] = offer.pricing_note
    return entry


def _output_schema(kind: str) -> dict[str, Any]:
    """What a result's ``output`` holds: one URL under the output kind's key."""
    url = {"type": "string", "format": "uri", "description": f"one {kind} URL"}
    return {"type": "object", "properties": {kind: url}, "required": [kind]}


def list_models(
    offers: Iterable[Offer], query: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``GET /v1/models``: (problems with the query, the page of entries)."""
    problems = []
    limit, offset = _int(query.get("limit", "50")), _int(query.get("offset", "0"))
    if limit is None or not 1 <= limit <= 500:
        problems.append({"loc": ["query", "limit"], "msg": "must be 1..500", "type": "range"})
    if offset is None or offset < 0:
        problems.append({"loc": ["query", "offset"], "msg": "must be >= 0", "type": "range"})
    kind = query.get("kind")
    if kind not in (None, "", "model", "workflow", "inference"):
        msg = "must be model, workflow or inference"
        problems.append({"loc": ["query", "kind"], "msg": msg, "type": "enum"})
    if problems or limit is None or offset is None:
        return problems, {}
    search = query.get("search", "").lower()
    category = query.get("category")
    schema = query.get("include_schema", "").lower() in ("true", "1")
    entries = [
        e
        for e in (catalog_entry(o, schema=schema) for o in offers)
        if (not search or search in f"{e['model_id']} {e['display_name']}".lower())
        and (not category or category in e["categories"])
        and (not kind or kind == e["kind"])
    ]
    page = entries[offset : offset + limit]
    return [], {"models": page, "total": len(entries), "limit": limit, "offset": offset}


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
