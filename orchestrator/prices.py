"""The last catalog price and job duration seen per (API host, model), and estimates from them.

RunComfy publishes a model's price only through its catalog endpoint, so comfysweep remembers the
last one it read in ``$COMFYSWEEP_HOME/prices.json`` (default ``~/.comfysweep``) and the last
median job duration a run observed, per API source (its host, or ``emulator`` for any Model API on
this machine: ``models/catalog.py``). A price is per second of output (frames / fps, or the job's
``duration``) or per output (one a job). An estimate uses only what was seen: never a made-up
figure.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from orchestrator import budget
from orchestrator.grid import GridCount, weighted_total
from orchestrator.models import Model, catalog
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
    "remember_prices",
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
    output_seconds: float | None  # seconds of output the sweep makes (frames / fps, or duration)
    cost_note: str  # how the cost was found, or why it is unknown
    time_note: str


def home() -> Path:
    """comfysweep's home folder, read from COMFYSWEEP_HOME at each call (tests point it away)."""
    return Path(os.environ.get("COMFYSWEEP_HOME") or Path.home() / ".comfysweep")


def api_host(api_base: str | None = None) -> str:
    """The source prices are kept under: the API base's host:port (the given one, else the
    source in force, else RUNCOMFY_MODEL_API_BASE's, else RunComfy's), or ``emulator`` for a
    Model API on this machine, whatever port it bound (``models.catalog.source_of``)."""
    return catalog.source_of(api_base)


def remember_price(model_id: str, info: PriceInfo, *, api_base: str | None = None) -> Price | None:
    """Record a catalog answer's price (``plan --online`` and runs call this); None if none."""
    price, unit = info.base_price_usd, info.price_unit
    if price is None or unit not in PRICE_UNITS or not math.isfinite(price) or price < 0:
        return None
    seen = Price(float(price), str(unit), _now())
    _update("prices", api_host(api_base), model_id, seen.__dict__)
    return seen


def remember_prices(infos: Mapping[str, PriceInfo], *, api_base: str | None = None) -> int:
    """Record the price of each model id's catalog entry (``models sync``) in one write; how many
    were usable."""
    host = api_host(api_base)
    seen: dict[str, dict[str, Any]] = {}
    for model_id, info in infos.items():
        price, unit = info.base_price_usd, info.price_unit
        if price is None or unit not in PRICE_UNITS or not math.isfinite(price) or price < 0:
            continue
        seen[_key(host, model_id)] = Price(float(price), str(unit), _now()).__dict__
    if seen:
        _update_many("prices", seen)
    return len(seen)


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
        cost_note = (
            f"priced by the second, but the seconds of output of {spec.model} are unknown "
            "(no frames/fps or duration input)"
        )
    else:
        cost = price.base_price_usd * seconds
        cost_note = (
            f"${price.base_price_usd:g} a second of output x {seconds:g} s, "
            f"price seen {price.seen_at}"
        )
    per_job = last_duration(spec.model, api_base=api_base)
    workers = concurrency or spec.run.concurrency
    rounds = math.ceil(jobs / workers)
    wall = None if per_job is None else per_job * rounds
    time_note = (
        f"no run of {spec.model} at {host} seen yet"
        if per_job is None
        else f"{per_job:.3g} s a job (last median) x {rounds} round(s) of {workers}"
    )
    return Estimate(host, cost, wall, price, per_job, seconds, cost_note, time_note)


def job_cost(model: Model, price: PriceInfo, inputs: Mapping[str, Any]) -> float | None:
    """One job's price from a catalog answer: per second of its output video, or per output."""
    if price.base_price_usd is None or price.price_unit is None:
        return None
    return budget.per_job(model, price.base_price_usd, price.price_unit, inputs)


def _output_seconds(spec: Spec, model: Model | None = None) -> float | None:
    """Seconds of output the sweep makes with ``model`` (default: the spec's), summed over its
    jobs by axis arithmetic (factors per axis, never a walk over the grid): frames x 1/fps where
    the model has both (vace-fun), else its ``duration`` input (a number, "5" or "5s"; the
    schema default fills in); None when a job's seconds are unknown ("auto", no such input)."""
    model = model or spec.definition
    varied = {k for d in spec.dimensions for k in d.keys}
    known = set(spec.fixed) | varied
    frames, fps, duration = (model.raw_key(n) for n in ("frames", "fps", "duration"))
    if frames and fps and frames in known and fps in known:
        factors: dict[str, Callable[[Any], Any]] = {
            frames: _exact,
            fps: lambda v: 1 / _positive(v),
        }
    elif duration and duration in known:
        factors = {duration: _seconds}
    else:
        return None
    try:
        total = weighted_total(spec, factors)
    except (TypeError, ValueError, KeyError):
        return None
    return float(total * spec.repeat)


def _seconds(value: Any) -> Fraction:
    seconds = budget.duration_seconds(value)
    if seconds is None:
        raise ValueError(f"not a duration: {value!r}")
    return Fraction(seconds)


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
    _update_many(section, {_key(host, model_id): entry})


def _update_many(section: str, entries: Mapping[str, dict[str, Any]]) -> None:
    data = _load()
    table = data.get(section)
    if not isinstance(table, dict):
        table = data[section] = {}
    table.update(entries)
    data["version"] = 1
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves half a file behind.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(data, tmp, indent=2, sort_keys=True)
    os.replace(tmp.name, path)
