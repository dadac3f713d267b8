"""The store's tables, declared once as SQLAlchemy Core tables; migrations must produce exactly
these (tests/test_migrations.py). Core, not an ORM: opening a store imports SQLAlchemy's engine
and nothing above it, so `comfysweep status` starts fast (benchmarks/status_100k.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

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


# A metadata of our own, so tables other modules declare never leak into the store's schema.
metadata = sa.MetaData()


def _col(name: str, kind: Any, *args: Any, null: bool = False, **kw: Any) -> sa.Column[Any]:
    """A column, NOT NULL unless ``null``."""
    return sa.Column(name, kind, *args, nullable=null, **kw)


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer, primary_key=True)


def _text(name: str, *, null: bool = False) -> sa.Column[Any]:
    return _col(name, sa.Text, null=null)


def _ts(name: str, *, null: bool = True) -> sa.Column[Any]:
    return _col(name, UTCDateTime, null=null)


def _run_id() -> sa.Column[Any]:
    return _col("run_id", sa.Integer, sa.ForeignKey("runs.id"), null=True)


# One row per `Store.lock()`: who ran, where, when.
RUNS = sa.Table(
    "runs",
    metadata,
    _id(),
    _text("owner"),
    _col("pid", sa.Integer),
    _text("host"),
    _text("version"),
    _ts("started_at", null=False),
    _ts("finished_at"),
)

# One row per job key; JSON columns hold canonical JSON text.
JOBS = sa.Table(
    "jobs",
    metadata,
    _text("key", null=False),
    _col("index", sa.Integer),  # the grid position (file names, the manifest)
    # The run order: claim takes pending jobs by (rank, key); rank = index in grid order.
    _col("rank", sa.BigInteger, default=0, server_default="0"),
    _text("model_id"),
    # The POST body; a large data: URI under key k is in `blobs`, its sha256 in blob_refs[k]
    # (for a list input, a list of them, null for an item kept inline).
    _text("inputs"),
    _text("blob_refs", null=True),  # {raw key: sha256}; NULL: none
    _text("sources", null=True),  # {raw key: local file}; NULL: none
    _col("repeat", sa.Integer, default=0),
    _text("state"),
    _text("prev_state", null=True),
    _text("request_id", null=True),
    _col("attempts", sa.Integer, default=0),
    _text("error", null=True),
    _col("cost", sa.Float, null=True),
    _col("outputs", sa.Text, default="[]"),
    _text("result", null=True),
    _col("in_spec", sa.Boolean, default=True),
    _run_id(),
    _ts("created_at", null=False),
    _ts("submitted_at"),
    _ts("started_at"),
    _ts("finished_at"),
    _ts("downloaded_at"),
    _ts("updated_at", null=False),
    sa.PrimaryKeyConstraint("key"),
    # Claim reads `state = 'pending' ORDER BY index`; counts group by state.
    sa.Index("ix_jobs_state_index", "state", "index"),
    # Streaming in grid order, keyset-paged on (index, key).
    sa.Index("ix_jobs_index_key", "index", "key"),
    # The spec's jobs (or the orphans) only: claim's pick in order, counts per state covered.
    sa.Index("ix_jobs_spec_state_index", "in_spec", "state", "index", "key"),
    # Claim's pick in run order (rank), which may differ from the grid order (index).
    sa.Index("ix_jobs_spec_state_rank", "in_spec", "state", "rank", "key"),
)

# The append-only log of transitions, so `show JOB` can tell a job's story.
EVENTS = sa.Table(
    "events",
    metadata,
    _id(),
    _col("job_key", sa.Text, sa.ForeignKey("jobs.key")),
    _text("from_state", null=True),
    _text("to_state"),
    _ts("at", null=False),
    _text("detail", null=True),
    _text("request_id", null=True),
    _run_id(),
    sa.Index("ix_events_job_key_id", "job_key", "id"),
)

# Large input strings (data: URIs) stored once, by the sha256 of their UTF-8 bytes.
BLOBS = sa.Table(
    "blobs",
    metadata,
    _text("sha256"),
    _col("size", sa.Integer),  # len(data), so a reader can budget a fetch without reading it
    _text("data"),
    sa.PrimaryKeyConstraint("sha256"),
)

# Store-wide settings and facts, JSON values by name.
META = sa.Table(
    "meta",
    metadata,
    _text("name"),
    _text("value"),
    sa.PrimaryKeyConstraint("name"),
)

# One row per submit attempt of a job: what was reserved for it and what it was charged.
# Open (``closed_at`` NULL) while its money is reserved: from the claim until the result settles
# it, or until it is released (provably never sent, refused) or charged at its estimate (an
# ``unknown`` or ``lost`` job put back by `retry`). At most one open attempt per job.
ATTEMPTS = sa.Table(
    "attempts",
    metadata,
    _id(),
    _col("job_key", sa.Text, sa.ForeignKey("jobs.key")),
    _col("attempt", sa.Integer),  # jobs.attempts of that submit
    _run_id(),
    _text("request_id", null=True),
    _col("estimate_usd", sa.Float, default=0.0),  # reserved while open
    _col("cost_usd", sa.Float, null=True),  # as the API reported it
    _col("charge_usd", sa.Float, null=True),  # what spend counts; closed
    _text("outcome", null=True),  # the state it closed (or sits) in
    _ts("opened_at", null=False),
    _ts("closed_at"),
    sa.UniqueConstraint("job_key", "attempt", name="uq_attempts_job_attempt"),
)

# The budget's running totals, one row (id 1): a claim checks them in O(1), never a SUM.
# ``spent_usd`` sums the closed attempts' charges, ``reserved_usd`` the open attempts'
# estimates, ``in_flight`` counts jobs submitting, queued or running (every runner's). ``cap_usd``
# and ``concurrency`` are the settings of the run that started last, for status and summaries.
LEDGER = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, default=1),
    _col("spent_usd", sa.Float, default=0.0),
    _col("reserved_usd", sa.Float, default=0.0),
    _col("in_flight", sa.Integer, default=0),
    _col("cap_usd", sa.Float, null=True),
    _col("concurrency", sa.Integer, null=True),
)

# A request from another shell to a live run (`stop`, `cancel`): its mailbox, one row each.
# ``keys`` is a JSON list of the job keys a cancel covers (NULL: the whole sweep); ``where_text``
# the ``--where`` as typed. The live run sets ``seen_at``/``run_id`` when it takes the request and
# ``outcome`` (one line) when it has acted on it.
CONTROLS = sa.Table(
    "controls",
    metadata,
    _id(),
    _text("kind"),  # "stop" | "cancel"
    _text("keys", null=True),
    _text("where_text", null=True),
    _ts("requested_at", null=False),
    _text("requested_by"),  # host:pid
    _ts("seen_at"),
    _run_id(),
    _text("outcome", null=True),
)

# A user's verdict on a job: "up", "down" or "pick" (the best of its row), one per job.
RATINGS = sa.Table(
    "ratings",
    metadata,
    _col("job_key", sa.Text, sa.ForeignKey("jobs.key")),
    _text("rating"),
    _ts("rated_at", null=False),
    sa.PrimaryKeyConstraint("job_key"),
)
