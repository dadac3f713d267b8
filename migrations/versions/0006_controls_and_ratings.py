"""Control requests from other shells, and ratings of jobs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

``controls`` is the mailbox through which `comfysweep stop` and `cancel` reach a live run: one row
per request (its kind, the job keys it covers, the ``--where`` text as typed), which the live run
marks seen and answers. ``ratings`` holds a user's verdict on a job (up, down, or the pick of its
row), kept apart from ``jobs`` so the per-job path never touches it. Frozen once shipped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "controls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("keys", sa.Text(), nullable=True),
        sa.Column("where_text", sa.Text(), nullable=True),
        _ts("requested_at", nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        _ts("seen_at"),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "ratings",
        sa.Column("job_key", sa.Text(), nullable=False),
        sa.Column("rating", sa.Text(), nullable=False),
        _ts("rated_at", nullable=False),
        sa.ForeignKeyConstraint(["job_key"], ["jobs.key"]),
        sa.PrimaryKeyConstraint("job_key"),
    )


def downgrade() -> None:
    op.drop_table("ratings")
    op.drop_table("controls")
