"""What ``comfysweep models`` and ``models show ID`` print: the shipped and cached models with
their output kind and price, and one model's inputs (type, range, enum, default, media)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orchestrator import budget, prices
from orchestrator.models import catalog, get_model, known_models

__all__ = ["model_rows", "models_lines", "show_data", "show_lines"]


def model_rows(search: str | None = None, output: str | None = None) -> list[dict[str, Any]]:
    """The shipped models, then the cache in force's, filtered by ``search`` (in the id or the
    display name, any case) and ``output`` kind; each with its price and unit (None: unknown)."""
    cache = catalog.load()
    entries = dict(cache.entries) if cache else {}
    rows = []
    shipped = {m.model_id: m for m in known_models()}
    for model_id in [*shipped, *(i for i in sorted(entries) if i not in shipped)]:
        model = shipped.get(model_id) or (cache.model(model_id) if cache else None)
        if model is None:
            continue
        usd, unit = _price(model_id, entries.get(model_id))
        row = {
            "model_id": model_id,
            "display_name": model.display or model.summary or "",
            "output": model.output_kind,
            "price_usd": usd,
            "price_unit": unit,
            "shipped": model_id in shipped,
        }
        text = f"{model_id} {row['display_name']}".lower()
        if (search and search.lower() not in text) or (output and model.output_kind != output):
            continue
        rows.append(row)
    return rows


def models_lines(search: str | None = None, output: str | None = None) -> list[str]:
    """The listing as text: where the cache came from and when, then one model a line."""
    return [_printable(line) for line in _models_lines(search, output)]


def _printable(line: str) -> str:
    """A line with no control character: a catalog's names and values are a server's text, and
    a newline or an escape sequence there must not forge lines or drive the terminal."""
    return "".join(c if c.isprintable() else "?" for c in line)


def _models_lines(search: str | None, output: str | None) -> list[str]:
    cache = catalog.load()
    source = catalog.in_force()
    if cache is None:
        head = (
            f"no model catalog cached for {source}: run `{catalog.sync_command(source)}` "
            "(listing only the models shipped with comfysweep)"
        )
        if source != catalog.EMULATOR and catalog.load(catalog.EMULATOR) is not None:
            head += "; the emulator's is cached: add --emulator"
    else:
        head = f"model catalog of {cache.api_base}, read {cache.read_at} (cached for {source})"
    rows = model_rows(search, output)
    lines = [head]
    if not rows:
        return [*lines, "no model matches"]
    width = max(len(r["model_id"]) for r in rows)
    name_width = min(max(len(r["display_name"]) for r in rows), 40)
    for r in rows:
        price = _shown_price(r["price_usd"], r["price_unit"])
        name = r["display_name"][:name_width]
        lines.append(f"{r['model_id']:<{width}}  {name:<{name_width}}  {r['output']:<5}  {price}")
    lines.append(f"{len(rows)} model(s); `comfysweep models show ID` prints one's inputs")
    return lines


def show_data(model_id: str) -> dict[str, Any]:
    """One model as JSON-ready data; an unknown id raises the one-line error (with suggestions)."""
    model = get_model(model_id, strict=True)
    cache = catalog.load()
    usd, unit = _price(model_id, cache.entries.get(model_id) if cache else None)
    required = set(model.required)
    inputs = []
    for key, prop in model.properties.items():
        name = model.display_name(key)
        item: dict[str, Any] = {
            "name": name,
            "key": key,
            "type": "number" if prop.get("type") == "float" else prop.get("type"),
            "required": key in required,
        }
        for word in ("minimum", "maximum", "enum", "default"):
            if word in prop:
                item[word] = prop[word]
        media = model.media_kind(key)
        if media is not None:
            item["media"] = media
            item["list"] = key in model.media_lists
            if model.max_items(key) is not None:
                item["max_items"] = model.max_items(key)
        inputs.append(item)
    return {
        "model_id": model.model_id,
        "display_name": model.display or model.summary or "",
        "output": model.output_kind,
        "price_usd": usd,
        "price_unit": unit,
        "inputs": inputs,
    }


def show_lines(model_id: str) -> list[str]:
    """One model as text: its name, output kind and price, then one input a line."""
    return [_printable(line) for line in _show_lines(model_id)]


def _show_lines(model_id: str) -> list[str]:
    data = show_data(model_id)
    title = data["model_id"] + (f" ({data['display_name']})" if data["display_name"] else "")
    price = _shown_price(data["price_usd"], data["price_unit"]).removeprefix("price ")
    lines = [title, f"output: {data['output']}; price: {price}"]
    if not data["inputs"]:
        return [*lines, "inputs: not published (the server validates them)"]
    lines.append("inputs:")
    width = max(len(_label(i)) for i in data["inputs"])
    for item in data["inputs"]:
        lines.append(f"  {_label(item):<{width}}  {_describe(item)}")
    return lines


def _label(item: Mapping[str, Any]) -> str:
    if item["name"] == item["key"]:
        return str(item["name"])
    return f"{item['name']} ({item['key']})"


def _describe(item: Mapping[str, Any]) -> str:
    parts = [str(item["type"] or "any")]
    if item.get("media"):
        kind = f"{item['media']} list" if item.get("list") else str(item["media"])
        if "max_items" in item:
            kind += f", at most {item['max_items']} items"
        parts.append(kind)
    parts.append("required" if item["required"] else "optional")
    if "minimum" in item or "maximum" in item:
        parts.append(f"{_value(item.get('minimum', '-inf'))}..{_value(item.get('maximum', 'inf'))}")
    if "enum" in item:
        parts.append("one of " + ", ".join(_value(v) for v in item["enum"]))
    if "default" in item:
        parts.append(f"default {_value(item['default'])}")
    return "  ".join(parts)


def _value(value: Any) -> str:
    """A schema value as a person reads it: a plain word bare, other text quoted, at most 60."""
    if isinstance(value, str):
        plain = value and value.strip() == value and " " not in value
        text = value if plain else repr(value)
    else:
        text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _price(model_id: str, entry: Mapping[str, Any] | None) -> tuple[float | None, str | None]:
    """The cached entry's price, else the last one seen for the model at this source."""
    if entry is not None:
        usd, unit = entry.get("base_price_usd"), entry.get("price_unit")
        checked = budget.checked(usd, unit)
        if checked is not None:
            return checked.usd, checked.unit
    seen = prices.last_price(model_id)
    return (seen.base_price_usd, seen.price_unit) if seen else (None, None)


def _shown_price(usd: float | None, unit: str | None) -> str:
    if usd is None or unit is None:
        return "price unknown"
    return f"${usd:g}/{unit}"
