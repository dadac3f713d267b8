"""The run order: jobs.rank, the position a job is claimed in, apart from its grid index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

A sweep may run in another order than its grid (breadth first, shuffled): claim picks the spec's
pending jobs by (rank, key), while ``index`` stays the grid position that file names and the
manifest show. Existing jobs keep the grid order they had (rank = index). Frozen once shipped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("rank", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute('UPDATE jobs SET "rank" = "index"')
    op.create_index("ix_jobs_spec_state_rank", "jobs", ["in_spec", "state", "rank", "key"])


def downgrade() -> None:
    op.drop_index("ix_jobs_spec_state_rank", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rank")
