"""What a sweep looks like from any shell: its status, one job whole, its failures, its runs.

Read-only, through the store's read-only open: never the runner's lock, so every view works while
a run is live (SQLite in WAL mode lets readers and the one writer go on side by side; PostgreSQL
is shared anyway) and after it. Counts are GROUP BYs and index walks in SQL, lists are paged: a
100,000-job store answers ``status`` in well under a second (benchmarks/status_100k.py).

The figures are plain dicts and dataclasses (``--json`` prints them); orchestrator/viewtext.py
turns them into the lines a user reads.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import StoreError
from orchestrator.locate import Located, locate
from orchestrator.responses import error_message
from orchestrator.store import STORE_FILE, JobRow, JobState, Store
from orchestrator.store.books import Ledger
from orchestrator.store.rows import RunRecord

if TYPE_CHECKING:  # the spec and the models load only when a view needs them (show, failures)
    from orchestrator.models import Model
    from orchestrator.spec import Spec

__all__ = [
    "MIN_PREFIX",
    "TROUBLE",
    "FailureGroup",
    "FailureList",
    "Pace",
    "RunView",
    "check_owner",
    "failed_jobs",
    "find_job",
    "job_view",
    "list_failures",
    "list_runs",
    "normalise_error",
    "open_sweep",
    "pace",
    "run_views",
    "show_job",
    "status_figures",
    "sweep_status",
    "varying_inputs",
]

_S = JobState
# What `failures` lists and `status` groups: jobs that ended without their files. `cancelled` is
# a choice, not a failure: listed only when asked (`failures --state cancelled`).
TROUBLE = (_S.FAILED, _S.EXPIRED, _S.LOST, _S.UNKNOWN)
LISTABLE = (*TROUBLE, _S.CANCELLED)
FLYING = (_S.SUBMITTING, _S.QUEUED, _S.RUNNING, _S.SUCCEEDED)
MIN_PREFIX = 4
_HEX = re.compile(r"[0-9a-f]+")  # a job key is a sha256 in hex
RATE_WINDOW = 600.0  # seconds: the rate is the last ten minutes' (or the run's, if younger)
TOP_ERRORS = 5
ERROR_WIDTH = 120
SAMPLE = 50  # jobs read at each end of the grid to tell which inputs vary, without a spec


@contextlib.contextmanager
def open_sweep(
    spec: Spec | str | Path | None, store: str | Path | None = None, *, cwd: Path | None = None
) -> Iterator[tuple[Located, Store]]:
    """The sweep ``SPEC``/``--store``/the current folder names, its store open read-only."""
    if spec is not None and not isinstance(spec, str | os.PathLike):  # a loaded Spec
        target = store if store is not None else spec.results_dir / STORE_FILE
        if "://" not in str(target) and not Path(target).exists():
            raise StoreError(f"{target}: no store yet; `comfysweep run` creates it")
        located = Located(spec, target, spec.results_dir)
    else:
        located = locate(None if spec is None else Path(spec), _text(store), cwd=cwd)
    with Store.open(located.store, readonly=True) as db:
        check_owner(db, located)
        yield located, db


def check_owner(db: Store, located: Located) -> None:
    """Refuse a store another sweep's spec names (a shared database, a slip of the finger)."""
    if located.spec is not None:
        owner = db.get_meta("sweep")
        if owner is not None and owner != located.spec.name:
            raise StoreError(
                f"store {db.name} belongs to sweep {owner!r}, not {located.spec.name!r} "
                f"({located.spec.path}): give the spec its own --store"
            )


# -- status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pace:
    """Jobs ended per minute over ``window`` seconds ending at ``end``; None before any ended."""

    per_minute: float | None
    window: float | None
    end: datetime | None


def pace(
    times: Iterable[datetime],
    end: datetime,
    *,
    window: float = RATE_WINDOW,
    since: datetime | None = None,
) -> Pace:
    """The rate of the finishes in ``times`` over the window ending at ``end``.

    The window starts ``window`` seconds before ``end``, or at ``since`` when that is later (the
    run's start: a run two minutes old is measured over its two minutes, not ten; or the oldest
    event the store's scan read, on a sweep that ends jobs faster than the scan reaches back).
    """
    start = end.timestamp() - window
    if since is not None:
        start = max(start, since.timestamp())
    span = max(end.timestamp() - start, 1.0)
    n = sum(1 for t in times if start <= t.timestamp() <= end.timestamp())
    if n == 0:
        return Pace(None, span, end)
    return Pace(n * 60.0 / span, span, end)


@dataclass(frozen=True)
class FailureGroup:
    """Jobs whose errors read the same once ids and measurements are taken out."""

    message: str
    count: int
    states: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "count": self.count, "states": self.states}


# A request id (a UUID, or a long hex or base64-ish token with a digit in it), and a measurement
# (a number with a fraction, or four digits and more: seconds, bytes, ports, timestamps). Short
# whole numbers stay: an HTTP status or a node number names the failure itself.
_UUID = re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")
_TOKEN = re.compile(r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{12,}\b")
_MEASURE = re.compile(r"\d+\.\d+|\d{4,}")


def normalise_error(error: Any) -> str:
    """One line that reads the same for the same failure: ids and measurements taken out."""
    text = " ".join((error_message(error) or "").split())
    text = _UUID.sub("<id>", text)
    text = _TOKEN.sub("<id>", text)
    text = _MEASURE.sub("<n>", text)
    return _cut(text, ERROR_WIDTH)


def group_failures(
    counted: Iterable[tuple[JobState, Any, int]], top: int | None = TOP_ERRORS
) -> tuple[list[FailureGroup], int]:
    """Failures grouped by message, commonest first (then by message); and how many groups."""
    groups: dict[str, dict[str, int]] = {}
    for state, error, n in counted:
        message = normalise_error(error) or f"({state}, no error recorded)"
        states = groups.setdefault(message, {})
        states[str(state)] = states.get(str(state), 0) + n
    ranked = sorted(groups.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    shown = ranked if top is None else ranked[:top]
    found = [FailureGroup(m, sum(s.values()), dict(sorted(s.items()))) for m, s in shown]
    return found, len(ranked)


@dataclass(frozen=True)
class RunView:
    """A run the store has seen, and whether it is still going: ``live``, ``finished`` or
    ``died`` (no finish recorded, and it no longer holds its lock)."""

    record: RunRecord
    state: str

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": r.id,
            "owner": r.owner,
            "pid": r.pid,
            "host": r.host,
            "version": r.version,
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.finished_at),
            "state": self.state,
            "submitted": r.submitted,
            "finished": r.finished,
            "spent_usd": r.spent_usd,
        }


def run_views(db: Store, *, unfinished: bool = False, tally: bool = True) -> list[RunView]:
    """Every run the store has seen, oldest first (``unfinished``: those without a finish), each
    ``finished``, ``live`` or ``died`` (no finish recorded, and it no longer holds its lock)."""
    runs = db.runs(unfinished=unfinished, tally=tally)
    live = db.live_run_ids() if any(r.finished_at is None for r in runs) else set()
    return [RunView(r, _state(r, live)) for r in runs]


def _state(record: RunRecord, live: set[int]) -> str:
    if record.finished_at is not None:
        return "finished"
    return "live" if record.id in live else "died"


def status_figures(
    db: Store, located: Located, *, now: datetime | None = None, top: int = TOP_ERRORS
) -> dict[str, Any]:
    """Everything ``status`` says, as one dict with stable keys (``status --json``).

    The first nine keys are the ones status always printed. ``rate_per_minute`` counts jobs that
    reached a final state over the last ten minutes (the live run's, or the last run's when none
    is live); ``eta_seconds`` is the jobs left over that rate, only while a run is live, and for
    only the jobs the cap still pays for when ``eta_note`` says the cap stops the sweep first.
    """
    now = now or datetime.now(UTC)
    counts = db.counts(in_spec=True)
    books = db.ledger()
    runs = run_views(db, unfinished=True, tally=False)
    live = next((r for r in runs if r.state == "live"), None)
    times, horizon = db.finish_times()
    end = now if live is not None or not times else times[0]
    started = live.record if live else _run_before(db, end)
    since = [t for t in (started.started_at if started else None, horizon) if t is not None]
    rate = pace(times, end, since=max(since) if since else None)
    left = counts[_S.PENDING] + sum(counts[s] for s in FLYING)
    eta, note, payable = _eta(db, books, counts, left, rate, live is not None)
    oldest = db.oldest_in_flight()
    groups, kinds = group_failures(db.error_counts(TROUBLE), top)
    return {
        "sweep": located.name,
        "store": str(located.store),
        "results": None if located.results is None else str(located.results),
        "jobs": sum(counts.values()),
        "counts": counts,
        "orphaned": sum(db.counts(in_spec=False).values()),
        "spent_usd": books.spent_usd,
        "reserved_usd": books.reserved_usd,  # jobs in flight, unknown or lost: may be billed
        "cap_usd": books.cap_usd,  # the last run's --max-cost
        "in_flight": books.in_flight,
        "concurrency": books.concurrency,
        "left": left,
        "rate_per_minute": rate.per_minute,
        "rate_window_seconds": rate.window,
        "eta_seconds": eta,
        "eta_note": note,
        "cap_pays_for": payable,
        "oldest_in_flight": None
        if oldest is None
        else {
            "key": oldest[0],
            "state": str(oldest[1]),
            "since": _iso(oldest[2]),
            "age_seconds": max(0.0, (now - oldest[2]).total_seconds()),
        },
        "failures": [g.as_dict() for g in groups],
        "failure_kinds": kinds,
        "failed_jobs": sum(counts[s] for s in TROUBLE),
        "live": live is not None,
        "run": None if live is None else live.as_dict(),
        "runs_unfinished": [r.as_dict() for r in runs if r.state != "live"],
        "as_of": _iso(now),
    }


def _run_before(db: Store, end: datetime) -> RunRecord | None:
    """The last run started by ``end``: the one that ended the last job, when none is live."""
    runs = [r for r in db.runs(tally=False) if r.started_at <= end]
    return runs[-1] if runs else None


def _eta(
    db: Store, books: Ledger, counts: Mapping[str, int], left: int, rate: Pace, live: bool
) -> tuple[float | None, str | None, int | None]:
    """(seconds, why it is what it is, how many of the pending jobs the cap still pays for)."""
    payable: int | None = None
    reach = left
    if books.cap_usd is not None and counts[_S.PENDING]:
        mean = db.mean_estimate()
        if mean is not None and mean > 0:
            room = max(0.0, books.cap_usd - books.spent_usd - books.reserved_usd)
            payable = min(counts[_S.PENDING], math.floor(room / mean + 1e-9))
            reach = left - counts[_S.PENDING] + payable
    capped = payable is not None and payable < counts[_S.PENDING]
    cap_note = (
        f"the ${books.cap_usd:.2f} cap stops the sweep with "
        f"{counts[_S.PENDING] - (payable or 0)} job(s) never submitted"
        if capped
        else None
    )
    if left == 0:
        return 0.0, None, payable
    if not live:
        return None, cap_note or "no run live", payable
    if rate.per_minute is None:
        return None, cap_note or "no job ended yet", payable
    return reach * 60.0 / rate.per_minute, cap_note, payable


# -- one job ------------------------------------------------------------------------------------


def find_job(db: Store, text: str) -> JobRow:
    """The job whose key is ``text`` or starts with it (at least MIN_PREFIX characters)."""
    prefix = text.strip().lower()
    if len(prefix) < MIN_PREFIX:
        raise StoreError(
            f"job key prefix {text!r} is too short: give at least {MIN_PREFIX} characters"
        )
    count, first = db.keys_starting(prefix) if _HEX.fullmatch(prefix) else (0, [])
    if count == 0:
        raise StoreError(f"no job {text!r} in store {db.name}")
    if count > 1:
        shown = max(16, len(prefix) + 4)
        raise StoreError(
            f"job key prefix {text!r} matches {count} jobs ({first[0][:shown]}, "
            f"{first[1][:shown]}, ...): give more characters"
        )
    row = db.get(first[0])
    if row is None:  # a run never deletes a job; only a hand edit between the two reads
        raise StoreError(f"no job {text!r} in store {db.name}")
    return row


def job_view(db: Store, row: JobRow, model: Model, results: Path | None) -> dict[str, Any]:
    """One job whole (``show --json``): inputs, attempts, every transition, files, rating."""
    return {
        "key": row.key,
        "index": row.index,
        "state": str(row.state),
        "orphaned": not row.in_spec,
        "model": row.model_id,
        "several_models": len(db.counts_by_model()) > 1,
        "request_id": row.request_id,
        "attempts_made": row.attempts,
        "cost_usd": row.cost,
        "inputs": model.shown_inputs(model.in_order(row.inputs)),
        "sources": {model.display_name(k): label for k, label in row.sources.items()},
        "error": row.error,
        "error_text": error_message(row.error),
        "rating": db.rating(row.key),
        "created_at": _iso(row.created_at),
        "submitted_at": _iso(row.submitted_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "downloaded_at": _iso(row.downloaded_at),
        "attempts": [
            {
                "attempt": a.attempt,
                "run_id": a.run_id,
                "request_id": a.request_id,
                "estimate_usd": a.estimate_usd,
                "cost_usd": a.cost_usd,
                "charge_usd": a.charge_usd,
                "outcome": a.outcome,
                "opened_at": _iso(a.opened_at),
                "closed_at": _iso(a.closed_at),
            }
            for a in db.attempts(row.key)
        ],
        "events": [
            {
                "at": _iso(e.at),
                "from": None if e.from_state is None else str(e.from_state),
                "to": str(e.to_state),
                "detail": e.detail,
                "request_id": e.request_id,
                "run_id": e.run_id,
            }
            for e in db.events(row.key)
        ],
        "files": [_file(results, o) for o in row.outputs],
    }


def _file(results: Path | None, output: Mapping[str, Any]) -> dict[str, Any]:
    path = str(output.get("path") or "")
    on_disk: int | None = None
    if results is not None and path:
        with contextlib.suppress(OSError):
            full = results / path
            if full.is_file():
                on_disk = full.stat().st_size
    return {
        "path": path,
        "size": output.get("size"),
        "exists": on_disk is not None,
        "size_on_disk": on_disk,
        "sha256": output.get("sha256"),
    }


# -- failures -----------------------------------------------------------------------------------


def failed_jobs(db: Store, states: Iterable[JobState] = TROUBLE) -> Iterator[JobRow]:
    """The spec's jobs in ``states`` in grid order, a page at a time."""
    return db.jobs(states, in_spec=True)


def varying_inputs(db: Store, located: Located) -> list[str]:
    """Raw keys of the inputs that differ between jobs: the spec's axes when it is given, else
    those that differ among the grid's first and last jobs."""
    if located.spec is not None:
        keys = []
        for spec in located.spec.each():  # every model's, in a sweep of several
            keys += [k for d in spec.dimensions for k in d.keys]
            keys += [k for e in spec.include for k, v in e.items() if spec.fixed.get(k) != v]
        return list(dict.fromkeys(keys))
    samples = db.input_samples(SAMPLE)
    if not samples:
        return []
    first = samples[0]
    names = dict.fromkeys(k for s in samples for k in s)
    varying = [k for k in names if any(s.get(k) != first.get(k) for s in samples)]

    def first_change(key: str) -> int:
        head = samples[:SAMPLE]
        return next((i for i, s in enumerate(head) if s.get(key) != first.get(key)), SAMPLE)

    # The grid's order: the last axis changes at every job, the first axis last of all.
    return sorted(varying, key=lambda k: -first_change(k))


def model_of(db: Store, located: Located, job_model: str | None = None) -> Model:
    """The sweep's model (its friendly names): the spec's, else the one the store records; with
    ``job_model``, that model of the sweep (a sweep may have several), by the spec's names."""
    from orchestrator.models import Model, get_model
    from orchestrator.sweepmodels import StoreModels

    if located.spec is not None:
        for part in located.spec.each():
            if part.model == job_model:
                return part.definition
        if job_model is None:
            return located.spec.definition
    if job_model is not None:
        return StoreModels(db).model(job_model)
    model_id = db.get_meta("model_id")
    return get_model(str(model_id)) if model_id else Model(model_id="")


# -- the use cases the CLI calls -----------------------------------------------------------------


def sweep_status(
    spec: Spec | str | Path | None = None,
    *,
    store: str | Path | None = None,
    top: int = TOP_ERRORS,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """``status``: the figures of the sweep ``spec``/``store``/``cwd`` names (status_figures)."""
    with open_sweep(spec, store, cwd=cwd) as (located, db):
        figures = status_figures(db, located, top=top)
        if db.several_models():  # a sweep of several models: each one's counts per state
            figures["models"] = db.counts_by_model(in_spec=True)
        return figures


def show_job(
    job: str,
    spec: Spec | str | Path | None = None,
    *,
    store: str | Path | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """``show JOB``: one job whole, by key or unique prefix (job_view)."""
    with open_sweep(spec, store, cwd=cwd) as (located, db):
        row = find_job(db, job)
        return job_view(db, row, model_of(db, located, row.model_id), located.results)


def list_runs(
    spec: Spec | str | Path | None = None,
    *,
    store: str | Path | None = None,
    cwd: Path | None = None,
) -> list[dict[str, Any]]:
    """``runs``: every run the store has seen, oldest first, each as RunView.as_dict()."""
    with open_sweep(spec, store, cwd=cwd) as (_, db):
        return [r.as_dict() for r in run_views(db)]


@dataclass(frozen=True)
class FailureList:
    """What ``failures`` lists: the jobs (in the order asked), their varying inputs, the model."""

    rows: Iterable[JobRow]
    varying: list[str]
    model: Model


SORTS = ("grid", "error", "state")


@contextlib.contextmanager
def list_failures(
    spec: Spec | str | Path | None = None,
    *,
    store: str | Path | None = None,
    states: Iterable[JobState | str] = TROUBLE,
    sort: str = "grid",
    cwd: Path | None = None,
) -> Iterator[FailureList]:
    """``failures``: the spec's jobs in ``states``, streamed in grid order (``sort="grid"``), or
    by error (commonest first, alike messages together) or by state, while the store is open."""
    chosen = [JobState(s) for s in states]
    if sort not in SORTS:
        raise ValueError(f"sort by one of {', '.join(SORTS)}")
    with open_sweep(spec, store, cwd=cwd) as (located, db):
        rows: Iterable[JobRow] = failed_jobs(db, chosen)
        if sort == "state":
            order = {s: i for i, s in enumerate(LISTABLE)}
            rows = sorted(rows, key=lambda r: (order.get(r.state, 99), r.index))
        elif sort == "error":
            listed = [(normalise_error(r.error), r) for r in rows]
            times: dict[str, int] = {}
            for message, _ in listed:
                times[message] = times.get(message, 0) + 1
            listed.sort(key=lambda mr: (-times[mr[0]], mr[0], mr[1].index))
            rows = [r for _, r in listed]
        yield FailureList(rows, varying_inputs(db, located), model_of(db, located))


# -- helpers ------------------------------------------------------------------------------------


def _text(store: str | Path | None) -> str | None:
    return None if store is None else str(store)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
