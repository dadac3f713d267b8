"""The model catalog as the Model API publishes it, with the emulator's own price."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.emulator.farm import PRICE_UNIT, PRICE_USD_PER_SECOND
from orchestrator.models import Model

__all__ = ["PRICING_NOTE", "catalog_entry", "categories", "list_models"]

PRICING_NOTE = (
    "Emulator price, not RunComfy's: {price} USD per second of output video (frames / fps), "
    "billed when the job ends. Read the real price from RunComfy's catalog."
)


def categories(model: Model) -> list[str]:
    """The catalog categories of a model (the registry has none: derived from its inputs)."""
    return ["image-to-video", "video"] if model.media_inputs else ["text-to-video", "video"]


def catalog_entry(model: Model, *, schema: bool) -> dict[str, Any]:
    """``GET /v1/models/{model_id}``'s document; ``schema`` adds the input and output schemas."""
    entry: dict[str, Any] = {
        "model_id": model.model_id,
        "display_name": model.summary or model.model_id,
        "description": model.summary,
        "categories": categories(model),
        "kind": "model",
        "model_url": f"https://www.runcomfy.com/models/{model.model_id}",
    }
    if schema:
        entry["input_schema"] = dict(model.input_schema)
        entry["output_schema"] = dict(model.output_schema)
    entry["inputs"] = list(model.properties)
    entry["required_inputs"] = list(model.required)
    entry["base_price_usd"] = PRICE_USD_PER_SECOND
    entry["price_unit"] = PRICE_UNIT
    entry["pricing_note"] = PRICING_NOTE.format(price=PRICE_USD_PER_SECOND)
    return entry


def list_models(
    models: Iterable[Model], query: Mapping[str, str]
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
        for e in (catalog_entry(m, schema=schema) for m in models)
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
