"""What is left of a sweep, and what it will cost: said before the first submit and by ``plan``.

Reads the store (streamed, never materialised) and a price (the catalog answer a run fetches, or
the remembered one): jobs left, their estimated cost (each job's own: per output, or per second
of its output from its frames and fps or its duration), the wall time from the last observed
job duration, and how many jobs the budget still covers.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator import budget
from orchestrator.errors import ComfysweepError
from orchestrator.models import Model
from orchestrator.prices import PriceInfo, job_cost
from orchestrator.store import JobState, Store

__all__ = ["Declined", "Forecast", "forecast", "forecast_lines", "question"]

# Jobs that may still be billed and hold no recorded cost yet.
_UNBILLED = (JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING)
# Jobs a resumed run takes over: polled, or downloaded.
_IN_FLIGHT = (*_UNBILLED, JobState.SUCCEEDED)


class Declined(ComfysweepError):
    """The user did not confirm the estimate: nothing was submitted, nothing paid."""


@dataclass(frozen=True)
class Forecast:
    """What a run would do with what is left; None where it cannot be known."""

    total: int  # the spec's jobs in the store
    done: int
    pending: int
    in_flight: int  # submitting, queued, running or succeeded: resumed, not submitted again
    cost_usd: float | None  # pending and unbilled in-flight jobs, each at its own estimate
    job_min_usd: float | None
    job_max_usd: float | None
    unpriced: int  # jobs left whose cost cannot be estimated (no price, or no output seconds)
    spent_usd: float
    cap_usd: float | None
    covered: int | None  # pending jobs the rest of the budget covers (None: no cap, or unknown)
    job_seconds: float | None
    concurrency: int
    wall_seconds: float | None
    price_note: str
    # What the ledger holds back for jobs that may be billed (in flight, unknown, lost), and what
    # the pending jobs alone are estimated at: the cap that covers all is spent + both.
    reserved_usd: float = 0.0
    pending_usd: float | None = None
    covered_usd: float | None = None  # the estimate of the ``covered`` pending jobs

    @property
    def left(self) -> int:
        return self.pending + self.in_flight

    @property
    def payable_usd(self) -> float | None:
        """The most this run can pay: the jobs in flight, and the pending jobs the cap has room
        for beside what the ledger holds reserved (unknown jobs too)."""
        if self.cost_usd is None:
            return None
        if self.cap_usd is None:
            return self.cost_usd
        if self.pending_usd is None or self.covered_usd is None:
            return max(0.0, min(self.cost_usd, self.cap_usd - self.spent_usd))
        return self.cost_usd - self.pending_usd + self.covered_usd

    @property
    def finishing_cap_usd(self) -> float | None:
        """The cap that lets every pending job go: spent, reserved, and the pending estimate."""
        if self.pending_usd is None:
            return None
        return self.spent_usd + self.reserved_usd + self.pending_usd

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["left"] = self.left
        money = ("cost_usd", "job_min_usd", "job_max_usd", "spent_usd", "reserved_usd")
        for name in (*money, "pending_usd", "covered_usd"):
            if data[name] is not None:
                data[name] = round(data[name], 4)
        return data


def forecast(
    store: Store,
    model: Model,
    price: PriceInfo | None,
    *,
    concurrency: int,
    cap_usd: float | None,
    job_seconds: float | None,
    price_note: str = "",
    each: Callable[[Mapping[str, Any]], float | None] | None = None,
    new: Sequence[Mapping[str, Any]] = (),
) -> Forecast:
    """The forecast of the store's spec jobs left, each priced from its own inputs (by
    ``each``, the run's estimator, when given: a sweep of several models has one per model).
    ``new``: the inputs of the spec's jobs the store does not hold yet (an axis added since the
    last run), pending after the store's own."""
    counts = Counter(store.counts(in_spec=True))
    counts[JobState.PENDING.value] += len(new)
    books = store.ledger()
    job = each if each is not None or price is None else _estimator(model, price)
    # As the claim counts it, once the run counted at this price what was held at $0 (jobs in
    # flight or unknown from before the ledger or a price; Store.reserve_unpriced).
    held, charged = (0.0, 0.0) if job is None else store.unpriced(job)
    spent = books.spent_usd + charged
    reserved = books.reserved_usd + held
    unbilled = list(_costs(store, job, _UNBILLED))  # at most the jobs in flight
    remaining = None if cap_usd is None else cap_usd - spent - reserved
    pending_usd: float | None = 0.0
    costs: list[float | None] = list(unbilled)
    covered: int | None = 0
    running_total = 0.0
    # In the order claims take them (rank): the cap covers a prefix of that order.
    pending_costs = (
        None if job is None else job(inputs)
        for inputs in itertools.chain(store.pending_inputs(), new)
    )
    for cost in pending_costs:
        costs.append(cost)
        pending_usd = None if cost is None or pending_usd is None else pending_usd + cost
        if covered is None or remaining is None or cost is None:
            covered = None
            continue
        if running_total + cost <= remaining + 1e-9:
            running_total += cost
            covered += 1
        else:
            remaining = -math.inf  # the claim order stops at the first job the cap refuses
    known = [c for c in costs if c is not None]
    unpriced = len(costs) - len(known)
    if price is not None and price.base_price_usd is not None and unpriced and not known:
        # A price was seen, but it prices none of these jobs: not "no price seen yet".
        unit = price.price_unit or "unnamed unit"
        price_note = f"a price of ${price.base_price_usd:g} per {unit} prices none of these jobs"
    pending = counts[JobState.PENDING.value]
    in_flight = sum(counts[s.value] for s in _IN_FLIGHT)
    remote = pending + sum(counts[s.value] for s in _UNBILLED)
    if cap_usd is not None and covered is not None:
        remote = covered + sum(counts[s.value] for s in _UNBILLED)
    rounds = math.ceil(remote / concurrency)
    return Forecast(
        total=sum(counts.values()),
        done=counts[JobState.DONE.value],
        pending=pending,
        in_flight=in_flight,
        cost_usd=None if unpriced or (price is None and costs) else sum(known),
        job_min_usd=min(known) if known else None,
        job_max_usd=max(known) if known else None,
        unpriced=unpriced,
        spent_usd=spent,
        cap_usd=cap_usd,
        covered=None if cap_usd is None else covered,
        job_seconds=job_seconds,
        concurrency=concurrency,
        wall_seconds=0.0 if not rounds else None if job_seconds is None else job_seconds * rounds,
        price_note=price_note,
        reserved_usd=reserved,
        pending_usd=None if price is None else pending_usd,
        covered_usd=None if cap_usd is None or covered is None else running_total,
    )


def _estimator(model: Model, price: PriceInfo) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda inputs: job_cost(model, price, inputs)


def _costs(
    store: Store,
    job: Callable[[Mapping[str, Any]], float | None] | None,
    states: tuple[JobState, ...],
) -> Iterator[float | None]:
    for row in store.jobs(states, in_spec=True):
        yield None if job is None else job({**row.inputs, budget.JOB_MODEL: row.model_id})


def forecast_lines(f: Forecast) -> list[str]:
    """The forecast as the lines a user reads before anything is paid."""
    lines = [_left_line(f), _cost_line(f), _wall_line(f), _cap_line(f)]
    return [line for line in lines if line]


def question(f: Forecast) -> str:
    """What the run asks on a terminal when the estimate is above ``run.confirm_above``."""
    about = _usd(f.payable_usd or 0.0)
    if f.cap_usd is not None and f.covered is not None and f.covered < f.pending:
        cut = f"(the {_usd(f.cap_usd)} cap stops there)"
        return f"Submit {f.covered} of {f.pending} job(s) {cut} for about {about}?"
    return f"Submit {f.pending} job(s) for about {about}?"


def _left_line(f: Forecast) -> str:
    parts = [f"{f.pending} pending"]
    if f.in_flight:
        parts.append(f"{f.in_flight} in flight, resumed")
    return f"left: {f.left} of {f.total} job(s) ({', '.join(parts)}); {f.done} done"


def _cost_line(f: Forecast) -> str:
    if f.cost_usd is None:
        why = f.price_note or "no catalog price seen yet"
        if f.unpriced and f.job_min_usd is not None:
            why = f"{f.unpriced} job(s) without frames/fps or a duration to price"
        return f"estimated cost: unknown ({why})"
    if f.job_min_usd is None or f.job_max_usd is None:
        return f"estimated cost: {_usd(f.cost_usd)}"
    if math.isclose(f.job_min_usd, f.job_max_usd):
        each = f"{_usd(f.job_min_usd)} a job"
    else:
        each = f"{_usd(f.job_min_usd)} to {_usd(f.job_max_usd)} a job"
    return f"estimated cost: {_usd(f.cost_usd)} ({each})"


def _wall_line(f: Forecast) -> str:
    if f.wall_seconds == 0:
        return "estimated wall time: none (nothing left to submit)"
    if f.wall_seconds is None or f.job_seconds is None:
        return "estimated wall time: unknown (no run of this model seen yet)"
    rounds = round(f.wall_seconds / f.job_seconds) if f.job_seconds else 0
    return (
        f"estimated wall time: {duration(f.wall_seconds)} at concurrency {f.concurrency} "
        f"({f.job_seconds:.3g} s a job, {rounds} round(s))"
    )


def _cap_line(f: Forecast) -> str:
    if f.cap_usd is None:
        return "cap: none (`--max-cost USD` sets one)"
    head = f"cap: {_usd(f.cap_usd)}, {_usd(f.spent_usd)} spent"
    if f.reserved_usd > 0:
        head += f", {_usd(f.reserved_usd)} reserved"
    if f.covered is None:
        return f"{head}; how many jobs it covers is unknown without a price"
    if f.covered >= f.pending:
        return f"{head}; covers every job left"
    short = f.pending - f.covered
    raise_to = ""
    if f.finishing_cap_usd is not None:
        raise_to = f" (`--max-cost {budget.cents_up(f.finishing_cap_usd):.2f}` covers all)"
    return (
        f"{head}; covers {f.covered} of {f.pending} pending job(s), {short} left undone{raise_to}"
    )


def duration(seconds: float) -> str:
    """``1h05m`` or ``4m07s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _usd(value: float) -> str:
    return f"${value:,.2f}"
