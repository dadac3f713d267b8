"""The budget's rules: a job's estimate from a price, ``--price``, a settled attempt's charge.

Pure arithmetic and wording: no SQL (the store keeps the ledger and checks the cap in the claim's
own transaction) and no HTTP (the price comes from the catalog call the run makes, or the flag).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from orchestrator.errors import SpecError

if TYPE_CHECKING:
    from orchestrator.models import Model

__all__ = [
    "EPSILON",
    "PRICE_UNITS",
    "Estimator",
    "Price",
    "cents_up",
    "charge",
    "checked",
    "duration_seconds",
    "estimator",
    "no_price_message",
    "output_seconds",
    "parse_price",
    "per_job",
    "raised_cap",
    "several_estimator",
    "stop_message",
]

PRICE_UNITS = ("second", "output")
# Sums of float estimates may miss an exact fit by a rounding error: never refuse for that.
EPSILON = 1e-9
_UNITS = {
    "s": "second",
    "sec": "second",
    "second": "second",
    "seconds": "second",
    "output": "output",
    "outputs": "output",
    "job": "output",
    "jobs": "output",
}
_EXAMPLE = "e.g. --price 0.05/second (per second of output video) or --price 0.25/output"

Estimator = Callable[[Mapping[str, Any]], float | None]
JOB_MODEL = "\x00model_id"  # the job's model id among the inputs the store hands an estimator


@dataclass(frozen=True)
class Price:
    """``usd`` per ``unit`` (a second of output video, or an output, one a job), and its source."""

    usd: float
    unit: str
    source: str = "catalog"  # catalog | --price | store (recorded by an earlier run)

    def __str__(self) -> str:
        return f"${self.usd:g}/{self.unit}"

    @property
    def base_price_usd(self) -> float:  # read as a catalog answer is (prices.PriceInfo)
        return self.usd

    @property
    def price_unit(self) -> str:
        return self.unit

    def to_meta(self) -> dict[str, Any]:
        return {"usd": self.usd, "unit": self.unit, "source": self.source}

    @classmethod
    def from_meta(cls, value: Any) -> Price | None:
        """The price a run recorded in the store, or None when there is none (or it is odd)."""
        if not isinstance(value, Mapping):
            return None
        return checked(value.get("usd"), value.get("unit"), source="store")


def checked(usd: Any, unit: Any, *, source: str = "catalog") -> Price | None:
    """A usable price (finite, not negative, a known unit), or None."""
    ok = isinstance(usd, int | float) and not isinstance(usd, bool)
    if not ok or not math.isfinite(usd) or usd < 0 or unit not in PRICE_UNITS:
        return None
    return Price(float(usd), str(unit), source)


def parse_price(text: str) -> Price:
    """``--price``'s value: ``0.05/second``, ``0.25/output``, or a bare number (per output)."""
    amount, _, unit = text.strip().removeprefix("$").partition("/")
    unit = unit.strip().lower() or "output"
    try:
        usd = float(amount)
    except ValueError:
        raise SpecError(f"--price {text}: {amount.strip()!r} is not a number; {_EXAMPLE}") from None
    if not math.isfinite(usd) or usd < 0:
        raise SpecError(f"--price {text}: must be a finite amount of at least 0; {_EXAMPLE}")
    if unit not in _UNITS:
        raise SpecError(f"--price {text}: unknown unit {unit!r}; {_EXAMPLE}")
    return Price(usd, _UNITS[unit], "--price")


def per_job(model: Model, usd: float, unit: str, inputs: Mapping[str, Any]) -> float | None:
    """One job's price: per second of its own output (``output_seconds``), or per output."""
    if unit == "output":
        return usd
    if unit != "second":
        return None
    seconds = output_seconds(model, inputs)
    return None if seconds is None else usd * seconds


def output_seconds(model: Model, inputs: Mapping[str, Any]) -> float | None:
    """Seconds of output one job makes: frames / fps where the model has both (vace-fun), else
    its ``duration`` input (5, 5.0, "5" or "5s"; the schema's default when the job leaves it
    out); None when neither says ("auto", a model without them)."""
    frames = inputs.get(model.raw_key("frames") or "frames")
    fps = inputs.get(model.raw_key("fps") or "fps")
    if _count(frames) and _count(fps) and fps > 0:
        return float(frames) / float(fps)
    key = model.raw_key("duration") or "duration"
    return duration_seconds(inputs.get(key, model.defaults().get(key)))


def duration_seconds(value: Any) -> float | None:
    """A ``duration`` input's seconds: a number, or a string such as "5" or "5s"; else None."""
    if isinstance(value, str):
        text = value.strip().lower().removesuffix("s").strip()
        try:
            value = float(text)
        except ValueError:
            return None
    if not _count(value) or value <= 0:
        return None
    return float(value)


def estimator(model: Model, price: Price | None) -> Estimator:
    """A job's estimate from its inputs at ``price``; None (unknown) when there is no price."""

    def estimate(inputs: Mapping[str, Any]) -> float | None:
        return None if price is None else per_job(model, price.usd, price.unit, inputs)

    return estimate


def several_estimator(priced: Sequence[tuple[Model, Price | None]]) -> Estimator:
    """The estimator of a sweep of several models, each at its own price.

    The store hands an estimator a job's inputs with its model id (``JOB_MODEL``): the job is
    estimated by its own model. Inputs without it are estimated by every model they fit (each
    key a field of that model, its required fields there; a model without a schema fits any) at
    the highest of their estimates: never below the job's own. None (unknown) when one of them
    has no estimate."""

    def estimate(inputs: Mapping[str, Any]) -> float | None:
        own = [(m, p) for m, p in priced if m.model_id == inputs.get(JOB_MODEL)]
        inputs = {k: v for k, v in inputs.items() if k != JOB_MODEL}
        fits = own or [(m, p) for m, p in priced if _fits(m, inputs)] or list(priced)
        guesses = [None if p is None else per_job(m, p.usd, p.unit, inputs) for m, p in fits]
        known = [g for g in guesses if g is not None]
        return max(known) if known and len(known) == len(guesses) else None

    return estimate


def job_inputs(inputs: str, model_id: str) -> dict[str, Any]:
    """What the store hands an estimator: a job's stored inputs (JSON) with its model id under
    ``JOB_MODEL`` (no field name can be it), so a job of several models is priced by its own
    model, not by every model its inputs happen to fit (a text-to-image job of a sweep with a
    text-to-video model was reserved at the video's price: the cap stopped the sweep early)."""
    loaded: dict[str, Any] = json.loads(inputs)
    return loaded | {JOB_MODEL: model_id}


def _fits(model: Model, inputs: Mapping[str, Any]) -> bool:
    if not model.has_schema:
        return True
    return set(inputs) <= set(model.properties) and all(k in inputs for k in model.required)


def charge(cost: float | None, estimate: float) -> tuple[float, bool]:
    """What a settled attempt counts: the API's cost when valid, else its estimate (and False)."""
    valid = (
        isinstance(cost, int | float)
        and not isinstance(cost, bool)
        and math.isfinite(cost)
        and cost >= 0
    )
    return (float(cost), True) if valid and cost is not None else (estimate, False)


def raised_cap(spent: float, reserved: float, undone: float) -> float:
    """The smallest cap, in whole cents, that leaves room for ``undone`` more."""
    return cents_up(spent + reserved + undone)


def cents_up(usd: float) -> float:
    """``usd`` rounded up to whole cents (a float's last-digit noise never adds a cent)."""
    return math.ceil(round(usd * 100, 6)) / 100


def stop_message(
    *,
    cap: float,
    spent: float,
    reserved: float,
    next_estimate: float,
    undone_jobs: int,
    undone_usd: float,
    unpriced: int,
    command: str,
) -> str:
    """The line a run stopped by its budget ends with: what is left, and the flag that goes on."""
    left = f"{undone_jobs} job(s) left undone, about ${undone_usd:.2f}"
    if unpriced:
        left += f" (+{unpriced} without an estimate)"
    new_cap = raised_cap(spent, reserved, undone_usd)
    return (
        f"budget reached: ${spent:.2f} spent and ${reserved:.2f} reserved of the ${cap:.2f} cap; "
        f"the next job (${next_estimate:.2f}) does not fit; {left}; "
        f"to finish them: {command} --max-cost {new_cap:.2f}"
    )


def no_price_message(command: str, *, given: bool = False) -> str:
    """The line a run with a cap but no known price stops with, before paying anything. A run
    given ``--price`` (``given``) stops so when that price cannot price the next job (a price
    per second for a job without a duration: an image model's, in a sweep of several models)."""
    if given:
        return (
            "no price known for the next job, so the budget cannot be kept: nothing submitted; "
            "the --price given does not price it (a price per second needs the job's duration, "
            "or frames and fps; an image is priced per output): leave --price out to price "
            "each model at its catalog price, or give a price of the job's unit"
        )
    return (
        "no price known, so the budget cannot be kept: nothing submitted; the model catalog "
        f"gave none; give one: {command} --price 0.05/second (or --price 0.25/output)"
    )


def _count(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
