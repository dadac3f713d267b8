"""The store's SQL in one place: the tables as Core objects and the statements built once.

Building a statement costs more than running it, so the per-job path reuses these objects and
SQLAlchemy's compiled cache does the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.canonical import canonical_json
from orchestrator.store import tables
from orchestrator.store.blobs import Splitter
from orchestrator.store.rows import JobLike
from orchestrator.store.states import FINAL, JobState

JOBS = tables.JOBS
EVENTS = tables.EVENTS
META = tables.META
RUNS = tables.RUNS
BLOBS = tables.BLOBS
ATTEMPTS = tables.ATTEMPTS
LEDGER = tables.LEDGER
CONTROLS = tables.CONTROLS
RATINGS = tables.RATINGS

_S = JobState
# Which timestamp a target state stamps (DESIGN: submitted on queued, started on running, ...).
STAMPS = {
    _S.QUEUED: "submitted_at",
    _S.RUNNING: "started_at",
    _S.SUCCEEDED: "finished_at",
    _S.FAILED: "finished_at",
    _S.CANCELLED: "finished_at",
    _S.DONE: "downloaded_at",
}
# A new attempt starts clean: what the previous attempt left is in the events and is not reused.
_FRESH_ATTEMPT = {
    "request_id": None,
    "error": None,
    "result": None,
    "outputs": "[]",
    "submitted_at": None,
    "started_at": None,
    "finished_at": None,
    "downloaded_at": None,
}
EVENT_INSERT = sa.insert(EVENTS)
SYNC_KEYS = sa.table("sync_keys", sa.column("key", sa.Text))
_PLACE = (JOBS.c["index"], JOBS.c.in_spec, JOBS.c.sources, JOBS.c.rank)
KNOWN = sa.select(JOBS.c.key, *_PLACE).where(JOBS.c.key.in_(sa.bindparam("p_keys", expanding=True)))
TWINS = sa.select(JOBS.c.key, JOBS.c.state).where(
    JOBS.c.key.in_(sa.bindparam("p_keys", expanding=True))
)
MOVE = (
    JOBS.update()
    .where(JOBS.c.key == sa.bindparam("p_key"))
    .values(
        {
            "index": sa.bindparam("p_index"),
            "rank": sa.bindparam("p_rank"),
            "in_spec": True,
            "sources": sa.bindparam("p_src"),
            "updated_at": sa.bindparam("p_now"),  # the manifest's fingerprint sees the move
        }
    )
)
# Jobs that left the spec: every in_spec job whose key this sync did not see. SQLite runs NOT IN
# through an ephemeral index; on PostgreSQL NOT IN (SELECT ...) is a subplan rescanned per row once
# the keys outgrow work_mem (100,000 keys: minutes), so it gets the anti-join NOT EXISTS plans.
ORPHAN = (
    JOBS.update()
    .where(JOBS.c.in_spec == True, JOBS.c.key.not_in(sa.select(SYNC_KEYS.c.key)))  # noqa: E712
    .values(in_spec=False, updated_at=sa.bindparam("p_now"))
)
ORPHAN_PG = (
    JOBS.update()
    .where(JOBS.c.in_spec, ~sa.exists().where(SYNC_KEYS.c.key == JOBS.c.key))
    .values(in_spec=False, updated_at=sa.bindparam("p_now"))
)
# sync_jobs on PostgreSQL: a batch's keys (and moves) travel as arrays, one parameter each, not a
# bound parameter (or a statement) per key: one round trip per batch, and no 1,000-term IN to parse.
_KEY_ARRAY = sa.bindparam("p_keys", type_=sa.ARRAY(sa.Text))  # generic: no dialect import
KNOWN_PG = sa.select(JOBS.c.key, *_PLACE).where(JOBS.c.key == sa.any_(_KEY_ARRAY))
SYNC_KEYS_ADD_PG = sa.text("INSERT INTO sync_keys (key) SELECT unnest(CAST(:p_keys AS text[]))")
MOVE_PG = sa.text(
    'UPDATE jobs SET "index" = m.i, rank = m.r, in_spec = true, sources = m.s, '
    "updated_at = CAST(:p_now AS timestamptz) "
    "FROM unnest(CAST(:p_keys AS text[]), CAST(:p_index AS integer[]), "
    "CAST(:p_rank AS bigint[]), CAST(:p_src AS text[])) AS m (k, i, r, s) WHERE jobs.key = m.k"
)
BLOBS_GET = sa.select(BLOBS.c.sha256, BLOBS.c.data).where(
    BLOBS.c.sha256.in_(sa.bindparam("p_shas", expanding=True))
)


def set_clause(to: JobState, fields: frozenset[str]) -> dict[str, Any]:
    """The SET of a move to ``to``: state, history, timestamps, and the caller's ``fields``."""
    c = JOBS.c
    values: dict[str, Any] = {
        # SET expressions read the row as it was, so prev_state gets the old state.
        "prev_state": c.state,
        "state": to.value,
        "updated_at": sa.bindparam("p_now"),
        "run_id": sa.func.coalesce(sa.bindparam("p_run", type_=sa.Integer), c.run_id),
    }
    if to is _S.SUBMITTING:
        values.update(_FRESH_ATTEMPT, attempts=c.attempts + 1)
    if to in STAMPS:
        values[STAMPS[to]] = sa.bindparam("p_now")
    values.update({name: sa.bindparam(f"v_{name}") for name in fields})
    return values


@functools.cache
def transition(to: JobState, sources: frozenset[JobState], fields: frozenset[str]) -> sa.Update:
    """The UPDATE of one transition shape: legal only from ``sources``, checked in the WHERE."""
    return (
        JOBS.update()
        .where(JOBS.c.key == sa.bindparam("p_key"))
        # OR of equalities, not an expanding IN: no per-call re-rendering of the SQL.
        .where(sa.or_(*(JOBS.c.state == s.value for s in sorted(sources))))
        .values(set_clause(to, fields))
        .returning(*JOBS.c)
    )


@functools.cache
def update_fields(fields: frozenset[str]) -> sa.Update:
    """The UPDATE of a job's non-state ``fields`` (Store.update), one per set of names."""
    values: dict[str, Any] = {name: sa.bindparam(f"v_{name}") for name in fields}
    values["updated_at"] = sa.bindparam("p_now")
    return JOBS.update().where(JOBS.c.key == sa.bindparam("p_key")).values(values)


# claim(): the oldest pending jobs of the spec -> submitting (statements built once).
PICK = (
    sa.select(JOBS.c.key)
    .where(JOBS.c.state == _S.PENDING.value, JOBS.c.in_spec)
    .order_by(JOBS.c.rank, JOBS.c.key)
    .limit(sa.bindparam("p_limit", type_=sa.Integer))
)
_CLAIM = JOBS.update().values(set_clause(_S.SUBMITTING, frozenset())).returning(*JOBS.c)
CLAIM = _CLAIM.where(JOBS.c.state == _S.PENDING.value)
# The pick's own WHERE is the legality check, in the same statement; a second `state = pending`
# out here would make SQLite walk every pending row through the state index instead of the keys.
CLAIM_SQLITE = _CLAIM.where(JOBS.c.key.in_(PICK))
PICK_PG = PICK.with_for_update(skip_locked=True)
CLAIM_PG = CLAIM.where(JOBS.c.key.in_(sa.bindparam("p_keys", expanding=True)))
# claim_batch(): up to p_limit jobs in rank order, each priced and reserved in the same transaction.
PICK_ONE = PICK.with_only_columns(JOBS.c.key, JOBS.c.inputs, JOBS.c.model_id)
PICK_ONE_PG = PICK_ONE.with_for_update(skip_locked=True)
# Which of a batch of keys the store holds (plan: the jobs a changed spec adds).
KEYS_KNOWN = sa.select(JOBS.c.key).where(JOBS.c.key.in_(sa.bindparam("p_keys", expanding=True)))

# -- the budget ledger (orchestrator/store/books.py) ---------------------------------------------
_L = LEDGER.c
LEDGER_GET = sa.select(LEDGER).where(_L.id == 1)
LEDGER_MOVE = (
    LEDGER.update()
    .where(_L.id == 1)
    .values(
        spent_usd=_L.spent_usd + sa.bindparam("p_spent", type_=sa.Float),
        reserved_usd=_L.reserved_usd + sa.bindparam("p_reserved", type_=sa.Float),
        in_flight=_L.in_flight + sa.bindparam("p_flight", type_=sa.Integer),
    )
)
# claim_batch(): the ledger read once, under its row lock on PostgreSQL (other runners' claims
# wait for this one's commit), every job of the batch checked in Python, then one write.
LEDGER_LOCK = LEDGER_GET.with_for_update()
LEDGER_RESERVE = (
    LEDGER.update()
    .where(_L.id == 1)
    .values(
        reserved_usd=sa.bindparam("p_reserved", type_=sa.Float),
        in_flight=_L.in_flight + sa.bindparam("p_flight", type_=sa.Integer),
    )
)
LEDGER_SETTINGS = (
    LEDGER.update()
    .where(_L.id == 1)
    .values(
        cap_usd=sa.bindparam("p_cap", type_=sa.Float),
        concurrency=sa.bindparam("p_conc", type_=sa.Integer),
    )
)


@functools.cache
def reserve(capped: bool, limited: bool) -> sa.Update:
    """Reserve ``p_e`` and one slot if the cap and the store-wide concurrency allow it.

    One conditional UPDATE of the one ledger row: on PostgreSQL its row lock serialises every
    runner's check-and-reserve; on SQLite BEGIN IMMEDIATE already does. No match: refused.
    """
    e = sa.bindparam("p_e", type_=sa.Float)
    stmt = LEDGER.update().where(_L.id == 1)
    if capped:
        cap = sa.bindparam("p_cap", type_=sa.Float)
        stmt = stmt.where(_L.spent_usd + _L.reserved_usd + e <= cap + sa.bindparam("p_eps"))
    if limited:
        stmt = stmt.where(_L.in_flight < sa.bindparam("p_conc", type_=sa.Integer))
    return stmt.values(reserved_usd=_L.reserved_usd + e, in_flight=_L.in_flight + 1)


# The ledger after a claim, as claim_one_pg() returns it beside the job's columns.
LEDGER_OUT = {
    f"ledger_{name}": name
    for name in ("spent_usd", "reserved_usd", "cap_usd", "in_flight", "concurrency")
}


@functools.cache
def claim_one_pg(capped: bool, limited: bool) -> sa.Select[Any]:
    """A claim of one job on PostgreSQL after its pick, in one statement (one round trip, not five).

    The reservation (reserve()'s conditional UPDATE of the ledger row), the job's move to submitting
    (only if the reserve matched), its event and its open attempt are data-modifying CTEs of one
    statement, in the pick's transaction; it returns the job's row and the ledger after the
    claim, or no row when the cap or the concurrency refused (then nothing was written). The
    ledger row stays locked from this statement to the COMMIT right after it: one claim.
    """
    e = sa.bindparam("p_e", type_=sa.Float)
    now = sa.bindparam("p_now", type_=JOBS.c.updated_at.type)
    booked = reserve(capped, limited).returning(*LEDGER.c).cte("reserve")
    claimed = (
        JOBS.update()
        .where(JOBS.c.key == sa.bindparam("p_key"), JOBS.c.state == _S.PENDING.value)
        .where(sa.select(booked.c.id).exists())
        .values(set_clause(_S.SUBMITTING, frozenset()))
        .returning(*JOBS.c)
        .cte("claimed")
    )
    c = claimed.c
    event = EVENTS.insert().from_select(
        ["job_key", "from_state", "to_state", "at", "detail", "request_id", "run_id"],
        sa.select(c.key, c.prev_state, c.state, now, sa.literal("claimed"), c.request_id, c.run_id),
    )
    attempt = ATTEMPTS.insert().from_select(
        ["job_key", "attempt", "run_id", "request_id", "estimate_usd", "opened_at"],
        sa.select(c.key, c.attempts, c.run_id, sa.null(), e, now),
    )
    ledger = [booked.c[name].label(label) for label, name in LEDGER_OUT.items()]
    return (
        sa.select(*claimed.c, *ledger)
        .select_from(booked.outerjoin(claimed, sa.true()))
        .add_cte(event.cte("event"), attempt.cte("attempt"))
    )


_A = ATTEMPTS.c
ATTEMPT_INSERT = sa.insert(ATTEMPTS)
ATTEMPT_OPEN = sa.select(_A.id, _A.estimate_usd).where(
    _A.job_key == sa.bindparam("p_key"), _A.closed_at.is_(None)
)
ATTEMPT_CLOSE = (
    ATTEMPTS.update()
    .where(_A.id == sa.bindparam("p_id"))
    .values(
        cost_usd=sa.bindparam("p_cost", type_=sa.Float),
        charge_usd=sa.bindparam("p_charge", type_=sa.Float),
        outcome=sa.bindparam("p_outcome"),
        request_id=sa.func.coalesce(sa.bindparam("p_rid", type_=sa.Text), _A.request_id),
        closed_at=sa.bindparam("p_now"),
    )
)
ATTEMPT_NOTE = (
    ATTEMPTS.update()
    .where(_A.id == sa.bindparam("p_id"))
    .values(
        outcome=sa.bindparam("p_outcome"),
        request_id=sa.func.coalesce(sa.bindparam("p_rid", type_=sa.Text), _A.request_id),
    )
)
# A job's open attempt noted (queued, unknown, lost: still reserved), found by its job: no read.
ATTEMPT_NOTE_OPEN = (
    ATTEMPTS.update()
    .where(_A.job_key == sa.bindparam("p_key"), _A.closed_at.is_(None))
    .values(
        outcome=sa.bindparam("p_outcome"),
        request_id=sa.func.coalesce(sa.bindparam("p_rid", type_=sa.Text), _A.request_id),
    )
)

# Open attempts reserved at $0 (from before the ledger, or claimed while no price was known): a
# run that knows a price raises each to its estimate, once (the WHERE makes a second runner's
# same UPDATE match nothing).
ATTEMPTS_UNPRICED = (
    sa.select(_A.id, JOBS.c.inputs, JOBS.c.model_id)
    .join(JOBS, JOBS.c.key == _A.job_key)
    .where(_A.closed_at.is_(None), _A.estimate_usd == 0)
)
# Closed attempts that may have been billed but were charged $0 (no price when their cost proved
# invalid, or an unknown job put back by `retry` with a $0 reservation): charged their estimate
# once a price is known. Released attempts ("not created") cost nothing and stay at $0.
ATTEMPTS_UNCHARGED = (
    sa.select(_A.id, JOBS.c.inputs, JOBS.c.model_id)
    .join(JOBS, JOBS.c.key == _A.job_key)
    .where(
        _A.closed_at.is_not(None),
        _A.cost_usd.is_(None),
        _A.charge_usd == 0,
        sa.not_(sa.func.coalesce(_A.outcome, "").like("not created%")),
    )
)
ATTEMPT_RECHARGE = (
    ATTEMPTS.update()
    .where(_A.id == sa.bindparam("p_id"), _A.cost_usd.is_(None), _A.charge_usd == 0)
    .values(charge_usd=sa.bindparam("p_e", type_=sa.Float))
)
ATTEMPT_REPRICE = (
    ATTEMPTS.update()
    .where(_A.id == sa.bindparam("p_id"), _A.closed_at.is_(None), _A.estimate_usd == 0)
    .values(estimate_usd=sa.bindparam("p_e", type_=sa.Float))
)


def sources_text(job: JobLike) -> str | None:
    """The ``sources`` column of a job: its {raw key: local file} as JSON, NULL when empty."""
    return canonical_json(dict(job.sources)) if job.sources else None


def rank_of(job: JobLike) -> int:
    """A job's run order: its ``rank`` when it has one (orchestrator.grid.Job), else its index."""
    rank = getattr(job, "rank", None)
    return job.index if rank is None else int(rank)


def new_job(job: JobLike, split: Splitter, now: datetime, run_id: int | None) -> dict[str, Any]:
    """A new pending row, large data: URIs split off to ``split``; columns left out are NULL."""
    inputs, refs = split.split(job.inputs)
    return {
        "key": job.key,
        "index": job.index,
        "rank": rank_of(job),
        "model_id": job.model_id,
        "inputs": canonical_json(inputs),
        "blob_refs": canonical_json(refs) if refs else None,
        "sources": sources_text(job),
        "repeat": job.repeat,
        "state": _S.PENDING.value,
        "attempts": 0,
        "outputs": "[]",
        "in_spec": True,
        "run_id": run_id,
        "created_at": now,
        "updated_at": now,
    }


def event_row(row: Mapping[Any, Any], at: datetime, detail: str | None) -> dict[str, Any]:
    return {
        "job_key": row["key"],
        "from_state": row["prev_state"],
        "to_state": row["state"],
        "at": at,
        "detail": detail,
        "request_id": row["request_id"],
        "run_id": row["run_id"],
    }


# A job's run id moves to the adopting run only if no other runner adopted it first.
ADOPT = (
    JOBS.update()
    .where(
        JOBS.c.key == sa.bindparam("p_key"),
        JOBS.c.state == sa.bindparam("p_state"),
        JOBS.c.run_id.is_not_distinct_from(sa.bindparam("p_old", type_=sa.Integer)),
    )
    .values(run_id=sa.bindparam("p_run", type_=sa.Integer))
)

# PostgreSQL session advisory lock that a live run holds: (namespace, hash of schema and run id),
# so stores in several schemas of one database never mistake each other's runs.
_RUN_KEY = "hashtext(current_schema() || ':' || CAST(:p_run AS text))"
_RUN_NS = 0x636F6D66  # "comf"
RUN_ALIVE_LOCK = sa.text(f"SELECT pg_advisory_lock({_RUN_NS}, {_RUN_KEY})")
RUN_ALIVE_TRY = sa.text(f"SELECT pg_try_advisory_lock({_RUN_NS}, {_RUN_KEY})")
RUN_ALIVE_UNLOCK = sa.text(f"SELECT pg_advisory_unlock({_RUN_NS}, {_RUN_KEY})")

# -- read-only views: status, show, failures, runs (orchestrator/views.py) -----------------------
# Each one an index walk or a GROUP BY in SQL: a 100,000-job store answers status in milliseconds.
_FINAL_NAMES = sorted(s.value for s in FINAL)
# The rate counts work the API finished: a cancel of many pending jobs is not a burst of speed.
_WORKED_NAMES = sorted(s.value for s in FINAL if s is not _S.CANCELLED)
_FLYING_NAMES = sorted(s.value for s in (_S.SUBMITTING, _S.QUEUED, _S.RUNNING, _S.SUCCEEDED))
# The latest events only (the primary key, backwards): the rate is a recent window's.
_LATEST = (
    sa.select(EVENTS.c.at, EVENTS.c.to_state)
    .order_by(EVENTS.c.id.desc())
    .limit(sa.bindparam("p_scan", type_=sa.Integer))
    .subquery()
)
RECENT_FINISHES = sa.select(_LATEST.c.at).where(_LATEST.c.to_state.in_(_WORKED_NAMES))
# The time of the oldest event that scan reads: the finishes it counts go back no further.
SCAN_HORIZON = (
    sa.select(EVENTS.c.at)
    .order_by(EVENTS.c.id.desc())
    .offset(sa.bindparam("p_back", type_=sa.Integer))
    .limit(1)
)
_SINCE = sa.func.coalesce(JOBS.c.submitted_at, JOBS.c.updated_at)
OLDEST_FLYING = (
    sa.select(JOBS.c.key, JOBS.c.state, _SINCE.label("since"))
    .where(JOBS.c.state.in_(_FLYING_NAMES))
    .order_by(_SINCE, JOBS.c.key)
    .limit(1)
)
# A state's jobs, (key, outputs) only, along ix_jobs_state_index (no sort).
OUTPUTS_OF = (
    sa.select(JOBS.c.key, JOBS.c.outputs)
    .where(JOBS.c.state == sa.bindparam("p_state", type_=sa.Text))
    .order_by(JOBS.c.state, JOBS.c["index"])
)
ERROR_GROUPS = (
    sa.select(JOBS.c.state, JOBS.c.error, sa.func.count().label("n"))
    .where(JOBS.c.state.in_(sa.bindparam("p_states", expanding=True)), JOBS.c.in_spec)
    .group_by(JOBS.c.state, JOBS.c.error)
)
_RECENT_ESTIMATES = (
    sa.select(_A.estimate_usd)
    .where(_A.estimate_usd > 0)
    .order_by(_A.id.desc())
    .limit(sa.bindparam("p_limit", type_=sa.Integer))
    .subquery()
)
MEAN_ESTIMATE = sa.select(sa.func.avg(_RECENT_ESTIMATES.c.estimate_usd))
# A key prefix as a range of the primary key: `key LIKE 'ab%'` would not use it on PostgreSQL.
_IN_RANGE = sa.and_(
    JOBS.c.key >= sa.bindparam("p_low", type_=sa.Text),
    JOBS.c.key < sa.bindparam("p_high", type_=sa.Text),
)
PREFIX_COUNT = sa.select(sa.func.count()).select_from(JOBS).where(_IN_RANGE)
PREFIX_KEYS = sa.select(JOBS.c.key).where(_IN_RANGE).order_by(JOBS.c.key).limit(2)
RUN_ROWS = sa.select(RUNS).order_by(RUNS.c.id)
# Runs not recorded as finished (a killed one too: the caller asks whether it is alive).
OPEN_RUNS = sa.select(RUNS).where(RUNS.c.finished_at.is_(None)).order_by(RUNS.c.id.desc())
OPEN_RUN_IDS = OPEN_RUNS.with_only_columns(RUNS.c.id)
RUN_ATTEMPTS = sa.select(
    _A.run_id, sa.func.count(_A.request_id), sa.func.coalesce(sa.func.sum(_A.charge_usd), 0.0)
).group_by(_A.run_id)
RUN_FINISHES = (
    sa.select(EVENTS.c.run_id, sa.func.count())
    .where(EVENTS.c.to_state.in_(_FINAL_NAMES))
    .group_by(EVENTS.c.run_id)
)
RATING_OF = sa.select(RATINGS.c.rating).where(RATINGS.c.job_key == sa.bindparam("p_key"))
# The first and the last jobs of the grid: between them, every axis that has two values differs.
_SAMPLE = sa.select(JOBS.c.inputs).limit(sa.bindparam("p_limit", type_=sa.Integer))
FIRST_INPUTS = _SAMPLE.order_by(JOBS.c["index"], JOBS.c.key)
LAST_INPUTS = _SAMPLE.order_by(JOBS.c["index"].desc(), JOBS.c.key.desc())
# -- the controls mailbox (orchestrator/control.py): stop and cancel requests to a live run ------
_C = CONTROLS.c
# A live run asks this every tick: one lookup at the end of the primary key's index.
CONTROLS_LAST = sa.select(sa.func.coalesce(sa.func.max(_C.id), 0))
CONTROLS_LAST_SQLITE = "SELECT coalesce(max(id), 0) FROM controls"  # by the driver, per POST
CONTROLS_AFTER = sa.select(CONTROLS).where(_C.id > sa.bindparam("p_after")).order_by(_C.id)
CONTROL_GET = sa.select(CONTROLS).where(_C.id == sa.bindparam("p_id"))
CONTROL_SEEN = (
    CONTROLS.update()
    .where(_C.id == sa.bindparam("p_id"), _C.seen_at.is_(None))
    .values(seen_at=sa.bindparam("p_now"), run_id=sa.bindparam("p_run", type_=sa.Integer))
)
CONTROL_ANSWER = (
    CONTROLS.update().where(_C.id == sa.bindparam("p_id")).values(outcome=sa.bindparam("p_text"))
)
# A request no run took is withdrawn, so no later run acts on it.
CONTROL_WITHDRAW = CONTROLS.delete().where(_C.id == sa.bindparam("p_id"), _C.seen_at.is_(None))
RUN_GET = sa.select(RUNS).where(RUNS.c.id == sa.bindparam("p_id"))
JOB_STATES = sa.select(JOBS.c.key, JOBS.c.state).where(
    JOBS.c.key.in_(sa.bindparam("p_keys", expanding=True))
)
CONTROL_INSERT = sa.insert(CONTROLS).returning(_C.id)
# -- the live manifest (orchestrator/manifest.py): what changed since its last write -------------
_E = EVENTS.c
EVENTS_LAST = sa.select(sa.func.coalesce(sa.func.max(_E.id), 0))
# Walked along the primary key from the last event written: O(changes), never the whole table.
CHANGED_AFTER = sa.select(_E.id, _E.job_key).where(_E.id > sa.bindparam("p_after")).order_by(_E.id)
CHANGED_AFTER_RUN = CHANGED_AFTER.where(_E.run_id == sa.bindparam("p_run", type_=sa.Integer))
JOBS_OF = sa.select(JOBS).where(JOBS.c.key.in_(sa.bindparam("p_keys", expanding=True)))
# Whether anything changed the jobs since the manifest was last written whole (a sync, a retry).
JOBS_FINGERPRINT = sa.select(sa.func.count(), sa.func.max(JOBS.c.updated_at))
