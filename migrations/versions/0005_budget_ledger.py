"""The budget ledger: every submit attempt's reservation and charge, and the running totals.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

``attempts`` keeps one row per submit (a retry no longer overwrites what an earlier attempt cost);
``ledger`` is one row of totals (spent, reserved, jobs in flight) that a claim checks and moves in
the same transaction as ``pending -> submitting``. Existing stores are backfilled from jobs.cost
(one closed attempt per costed job) and their jobs in flight or unknown get an open attempt with a
$0 estimate: no price was recorded before. Frozen once shipped: nothing imported from the package.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_REMOTE = "('submitting', 'queued', 'running')"
_OPEN = "('submitting', 'queued', 'running', 'unknown', 'lost')"


def _ts(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_key", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("estimate_usd", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("charge_usd", sa.Float(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        _ts("opened_at", nullable=False),
        _ts("closed_at"),
        sa.ForeignKeyConstraint(["job_key"], ["jobs.key"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_key", "attempt", name="uq_attempts_job_attempt"),
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spent_usd", sa.Float(), nullable=False),
        sa.Column("reserved_usd", sa.Float(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("cap_usd", sa.Float(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    columns = "job_key, attempt, run_id, request_id, estimate_usd, cost_usd, charge_usd, outcome"
    op.execute(
        f"INSERT INTO attempts ({columns}, opened_at, closed_at) "
        "SELECT key, attempts, run_id, request_id, 0, cost, cost, state, updated_at, updated_at "
        "FROM jobs WHERE cost IS NOT NULL"
    )
    op.execute(
        f"INSERT INTO attempts ({columns}, opened_at) "
        "SELECT key, attempts, run_id, request_id, 0, NULL, NULL, state, updated_at "
        f"FROM jobs WHERE cost IS NULL AND state IN {_OPEN}"
    )
    op.execute(
        "INSERT INTO ledger (id, spent_usd, reserved_usd, in_flight) SELECT 1, "
        "COALESCE((SELECT SUM(cost) FROM jobs), 0), 0, "
        f"(SELECT COUNT(*) FROM jobs WHERE state IN {_REMOTE})"
    )


def downgrade() -> None:
    op.drop_table("ledger")
    op.drop_table("attempts")
