"""The last catalog price and job duration seen per (API host, model), and estimates from them.

RunComfy publishes a model's price only through its catalog endpoint, so comfysweep remembers the
last one it read in ``$COMFYSWEEP_HOME/prices.json`` (default ``~/.comfysweep``) and the last
median job duration a run observed. An estimate uses only what was seen: never a made-up figure.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from orchestrator import budget
from orchestrator.client import BASE_VAR, DEFAULT_BASE
from orchestrator.grid import GridCount, weighted_total
from orchestrator.models import Model
from orchestrator.spec import Spec

__all__ = [
    "Estimate",
    "Price",
    "api_host",
    "estimate",
    "home",
    "job_cost",
    "last_duration",
    "last_price",
    "remember_duration",
    "remember_price",
]

PRICE_UNITS = budget.PRICE_UNITS


class PriceInfo(Protocol):
    """What the catalog says about a price (the client's ``ModelInfo`` fits)."""

    @property
    def base_price_usd(self) -> float | None: ...
    @property
    def price_unit(self) -> str | None: ...


@dataclass(frozen=True)
class Price:
    """A catalog price: ``base_price_usd`` per ``price_unit`` (a second of output, or an output)."""

    base_price_usd: float
    price_unit: str
    seen_at: str


@dataclass(frozen=True)
class Estimate:
    """A sweep's estimated cost and wall time; None where nothing was seen, with the reason."""

    host: str
    cost_usd: float | None
    wall_seconds: float | None
    price: Price | None
    job_seconds: float | None  # the last observed median seconds a job took
    output_seconds: float | None  # seconds of video the sweep makes (frames / fps per job)
    cost_note: str  # how the cost was found, or why it is unknown
    time_note: str


def home() -> Path:
    """comfysweep's home folder, read from COMFYSWEEP_HOME at each call (tests point it away)."""
    return Path(os.environ.get("COMFYSWEEP_HOME") or Path.home() / ".comfysweep")


def api_host(api_base: str | None = None) -> str:
    """The host:port of the API base: the given one, RUNCOMFY_MODEL_API_BASE, or RunComfy's."""
    base = api_base or os.environ.get(BASE_VAR) or DEFAULT_BASE
    return urlsplit(base).netloc or base


def remember_price(model_id: str, info: PriceInfo, *, api_base: str | None = None) -> Price | None:
    """Record a catalog answer's price (``plan --online`` and runs call this); None if none."""
    price, unit = info.base_price_usd, info.price_unit
    if price is None or unit not in PRICE_UNITS or not math.isfinite(price) or price < 0:
        return None
    seen = Price(float(price), str(unit), _now())
    _update("prices", api_host(api_base), model_id, seen.__dict__)
    return seen


def remember_duration(model_id: str, median_seconds: float, *, api_base: str | None = None) -> None:
    """Record the median seconds a job took (submit to result) in the latest run."""
    if math.isfinite(median_seconds) and median_seconds > 0:
        entry = {"median_seconds": float(median_seconds), "seen_at": _now()}
        _update("durations", api_host(api_base), model_id, entry)


def last_price(model_id: str, *, api_base: str | None = None) -> Price | None:
    """The last catalog price seen for the model at this API host."""
    entry = _load().get("prices", {}).get(_key(api_host(api_base), model_id))
    try:
        return Price(
            float(entry["base_price_usd"]), str(entry["price_unit"]), str(entry["seen_at"])
        )
    except (TypeError, KeyError, ValueError):
        return None


def last_duration(model_id: str, *, api_base: str | None = None) -> float | None:
    """The last observed median seconds of a job of the model at this API host."""
    entry = _load().get("durations", {}).get(_key(api_host(api_base), model_id))
    try:
        return float(entry["median_seconds"])
    except (TypeError, KeyError, ValueError):
        return None


def estimate(
    spec: Spec,
    count: GridCount | int,
    *,
    concurrency: int | None = None,
    api_base: str | None = None,
) -> Estimate:
    """The sweep's cost (price x output seconds or outputs) and wall time at its concurrency."""
    jobs = count.jobs if isinstance(count, GridCount) else count
    host = api_host(api_base)
    price = last_price(spec.model, api_base=api_base)
    seconds = _output_seconds(spec)
    cost: float | None = None
    if price is None:
        cost_note = f"no catalog price seen yet for {spec.model} at {host}"
    elif price.price_unit == "output":
        cost = price.base_price_usd * jobs
        cost_note = f"${price.base_price_usd:g} an output (one a job), price seen {price.seen_at}"
    elif seconds is None:
        cost_note = f"priced by the second, but {spec.model} has no frames/fps inputs"
    else:
        cost = price.base_price_usd * seconds
        cost_note = (
            f"${price.base_price_usd:g} a second of output x {seconds:g} s, "
            f"price seen {price.seen_at}"
        )
    per_job = last_duration(spec.model, api_base=api_base)
    workers = concurrency or spec.run.concurrency
    wall = None if per_job is None else per_job * math.ceil(jobs / workers)
    time_note = (
        f"no run of {spec.model} at {host} seen yet"
        if per_job is None
        else f"{per_job:g} s a job (last median) x {math.ceil(jobs / workers)} rounds of {workers}"
    )
    return Estimate(host, cost, wall, price, per_job, seconds, cost_note, time_note)


def job_cost(model: Model, price: PriceInfo, inputs: Mapping[str, Any]) -> float | None:
    """One job's price from a catalog answer: per second of its output video, or per output."""
    if price.base_price_usd is None or price.price_unit is None:
        return None
    return budget.per_job(model, price.base_price_usd, price.price_unit, inputs)


def _output_seconds(spec: Spec) -> float | None:
    """Seconds of video the sweep makes: frames / fps summed over its jobs, by axis arithmetic
    (frames x 1/fps factors per axis, never a walk over the grid); None unless both are numbers."""
    model = spec.definition
    frames, fps = model.raw_key("frames"), model.raw_key("fps")
    if not frames or not fps or frames not in spec.fixed or fps not in spec.fixed:
        return None
    try:
        total = weighted_total(spec, {frames: _exact, fps: lambda v: 1 / _positive(v)})
    except (TypeError, ValueError):
        return None
    return float(total * spec.repeat)


def _exact(value: Any) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"not a number: {value!r}")
    return Fraction(value)


def _positive(value: Any) -> Fraction:
    number = _exact(value)
    if number <= 0:
        raise ValueError(f"not above 0: {value!r}")
    return number


def _key(host: str, model_id: str) -> str:
    return f"{host} {model_id}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _path() -> Path:
    return home() / "prices.json"


def _load() -> dict[str, Any]:
    """The cache, or an empty one if it is missing or unreadable (it is only a cache)."""
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update(section: str, host: str, model_id: str, entry: dict[str, Any]) -> None:
    data = _load()
    table = data.get(section)
    if not isinstance(table, dict):
        table = data[section] = {}
    table[_key(host, model_id)] = entry
    data["version"] = 1
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves half a file behind.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=2, sort_keys=True)
    os.replace(tmp.name, path)
