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
from orchestrator.store.blobs import Splitter
from orchestrator.store.rows import JobLike
from orchestrator.store.states import JobState
from orchestrator.store.tables import BlobTable, EventTable, JobTable, MetaTable, RunTable

JOBS: sa.Table = JobTable.__table__  # type: ignore[attr-defined]
EVENTS: sa.Table = EventTable.__table__  # type: ignore[attr-defined]
META: sa.Table = MetaTable.__table__  # type: ignore[attr-defined]
RUNS: sa.Table = RunTable.__table__  # type: ignore[attr-defined]
BLOBS: sa.Table = BlobTable.__table__  # type: ignore[attr-defined]

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
        }
    )
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
