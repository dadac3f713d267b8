"""The store's tables, declared once as SQLModel classes; migrations must produce exactly these.

The store's statements use them as Core tables (``JOBS`` ... below, the classes' ``__table__``):
the ORM stays off every path. Importing SQLModel (pydantic and SQLAlchemy's ORM) costs a command
~0.18 s of its start on this project's 2-core machines (benchmarks/status_100k.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

__all__ = [
    "ATTEMPTS",
    "BLOBS",
    "CONTROLS",
    "EVENTS",
    "JOBS",
    "LEDGER",
    "META",
    "RATINGS",
    "RUNS",
    "AttemptTable",
    "BlobTable",
    "ControlTable",
    "EventTable",
    "JobTable",
    "LedgerTable",
    "MetaTable",
    "RatingTable",
    "RunTable",
    "UTCDateTime",
    "metadata",
]


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive text) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A registry of our own, so tables other modules declare never leak into the store's schema.
_registry = registry()


class _Base(SQLModel, registry=_registry):
    pass


def _ts(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable)


class RunTable(_Base, table=True):
    """One row per `Store.lock()`: who ran, where, when."""

    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(sa_type=sa.Text)
    pid: int
    host: str = Field(sa_type=sa.Text)
    version: str = Field(sa_type=sa.Text)
    started_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts()


class JobTable(_Base, table=True):
    """One row per job key; JSON columns hold canonical JSON text."""

    __tablename__ = "jobs"
    __table_args__ = (
        # Claim reads `state = 'pending' ORDER BY index`; counts group by state.
        sa.Index("ix_jobs_state_index", "state", "index"),
        # Streaming in grid order, keyset-paged on (index, key).
        sa.Index("ix_jobs_index_key", "index", "key"),
        # The spec's jobs (or the orphans) only: claim's pick in order, counts per state covered.
        sa.Index("ix_jobs_spec_state_index", "in_spec", "state", "index", "key"),
        # Claim's pick in run order (rank), which may differ from the grid order (index).
        sa.Index("ix_jobs_spec_state_rank", "in_spec", "state", "rank", "key"),
    )

    key: str = Field(sa_type=sa.Text, primary_key=True)
    index: int  # the grid position (file names, the manifest)
    # The run order: claim takes pending jobs by (rank, key); rank = index in grid order.
    rank: int = Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})
    model_id: str = Field(sa_type=sa.Text)
    # The POST body; a large data: URI under key k is in `blobs`, its sha256 in blob_refs[k]
    # (for a list input, a list of them, null for an item kept inline).
    inputs: str = Field(sa_type=sa.Text)
    blob_refs: str | None = Field(default=None, sa_type=sa.Text)  # {raw key: sha256}; NULL: none
    sources: str | None = Field(default=None, sa_type=sa.Text)  # {raw key: local file}; NULL: none
    repeat: int = 0
    state: str = Field(sa_type=sa.Text)
    prev_state: str | None = Field(default=None, sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    attempts: int = 0
    error: str | None = Field(default=None, sa_type=sa.Text)
    cost: float | None = Field(default=None, sa_type=sa.Float)
    outputs: str = Field(default="[]", sa_type=sa.Text)
    result: str | None = Field(default=None, sa_type=sa.Text)
    in_spec: bool = True
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    created_at: datetime = _ts(nullable=False)
    submitted_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    downloaded_at: datetime | None = _ts()
    updated_at: datetime = _ts(nullable=False)


class EventTable(_Base, table=True):
    """The append-only log of transitions, so `show JOB` can tell a job's story."""

    __tablename__ = "events"
    __table_args__ = (sa.Index("ix_events_job_key_id", "job_key", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_key: str = Field(sa_type=sa.Text, foreign_key="jobs.key")
    from_state: str | None = Field(default=None, sa_type=sa.Text)
    to_state: str = Field(sa_type=sa.Text)
    at: datetime = _ts(nullable=False)
    detail: str | None = Field(default=None, sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    run_id: int | None = Field(default=None, foreign_key="runs.id")


class BlobTable(_Base, table=True):
    """Large input strings (data: URIs) stored once, by the sha256 of their UTF-8 bytes."""

    __tablename__ = "blobs"

    sha256: str = Field(sa_type=sa.Text, primary_key=True)
    size: int  # len(data), so a reader can budget a fetch without reading the data
    data: str = Field(sa_type=sa.Text)


class MetaTable(_Base, table=True):
    """Store-wide settings and facts, JSON values by name."""

    __tablename__ = "meta"

    name: str = Field(sa_type=sa.Text, primary_key=True)
    value: str = Field(sa_type=sa.Text)


class AttemptTable(_Base, table=True):
    """One row per submit attempt of a job: what was reserved for it and what it was charged.

    Open (``closed_at`` NULL) while its money is reserved: from the claim until the result settles
    it, or until it is released (provably never sent, refused) or charged at its estimate (an
    ``unknown`` or ``lost`` job put back by `retry`). At most one open attempt per job.
    """

    __tablename__ = "attempts"
    __table_args__ = (sa.UniqueConstraint("job_key", "attempt", name="uq_attempts_job_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    job_key: str = Field(sa_type=sa.Text, foreign_key="jobs.key")
    attempt: int  # jobs.attempts of that submit
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    estimate_usd: float = Field(default=0.0, sa_type=sa.Float)  # reserved while open
    cost_usd: float | None = Field(default=None, sa_type=sa.Float)  # as the API reported it
    charge_usd: float | None = Field(default=None, sa_type=sa.Float)  # what spend counts; closed
    outcome: str | None = Field(default=None, sa_type=sa.Text)  # the state it closed (or sits) in
    opened_at: datetime = _ts(nullable=False)
    closed_at: datetime | None = _ts()


class LedgerTable(_Base, table=True):
    """The budget's running totals, one row (id 1): a claim checks them in O(1), never a SUM.

    ``spent_usd`` sums the closed attempts' charges, ``reserved_usd`` the open attempts'
    estimates, ``in_flight`` counts jobs submitting, queued or running (every runner's). ``cap_usd``
    and ``concurrency`` are the settings of the run that started last, for status and summaries.
    """

    __tablename__ = "ledger"

    id: int = Field(default=1, primary_key=True)
    spent_usd: float = Field(default=0.0, sa_type=sa.Float)
    reserved_usd: float = Field(default=0.0, sa_type=sa.Float)
    in_flight: int = 0
    cap_usd: float | None = Field(default=None, sa_type=sa.Float)
    concurrency: int | None = None


class ControlTable(_Base, table=True):
    """A request from another shell to a live run (`stop`, `cancel`): its mailbox, one row each.

    ``keys`` is a JSON list of the job keys a cancel covers (NULL: the whole sweep);
    ``where_text`` the ``--where`` as typed. The live run sets ``seen_at``/``run_id`` when it
    takes the request and ``outcome`` (one line) when it has acted on it.
    """

    __tablename__ = "controls"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=sa.Text)  # "stop" | "cancel"
    keys: str | None = Field(default=None, sa_type=sa.Text)
    where_text: str | None = Field(default=None, sa_type=sa.Text)
    requested_at: datetime = _ts(nullable=False)
    requested_by: str = Field(sa_type=sa.Text)  # host:pid
    seen_at: datetime | None = _ts()
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    outcome: str | None = Field(default=None, sa_type=sa.Text)


class RatingTable(_Base, table=True):
    """A user's verdict on a job: "up", "down" or "pick" (the best of its row), one per job."""

    __tablename__ = "ratings"

    job_key: str = Field(sa_type=sa.Text, primary_key=True, foreign_key="jobs.key")
    rating: str = Field(sa_type=sa.Text)
    rated_at: datetime = _ts(nullable=False)


metadata: sa.MetaData = _registry.metadata

# The same tables as Core objects, the store's statements' (orchestrator/store/sql.py) names.
JOBS: sa.Table = JobTable.__table__  # type: ignore[attr-defined]
EVENTS: sa.Table = EventTable.__table__  # type: ignore[attr-defined]
META: sa.Table = MetaTable.__table__  # type: ignore[attr-defined]
RUNS: sa.Table = RunTable.__table__  # type: ignore[attr-defined]
BLOBS: sa.Table = BlobTable.__table__  # type: ignore[attr-defined]
ATTEMPTS: sa.Table = AttemptTable.__table__  # type: ignore[attr-defined]
LEDGER: sa.Table = LedgerTable.__table__  # type: ignore[attr-defined]
CONTROLS: sa.Table = ControlTable.__table__  # type: ignore[attr-defined]
RATINGS: sa.Table = RatingTable.__table__  # type: ignore[attr-defined]
