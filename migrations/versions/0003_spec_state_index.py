"""An index on (in_spec, state, index, key): the spec's jobs apart from the orphaned ones.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Claim picks the spec's pending jobs in grid order, and run and status count the spec's jobs and
the orphaned ones (jobs a spec edit left behind) per state; with in_spec only in the table, each
of those read every row. No data changes. Frozen, like 0001 and 0002.
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_spec_state_index", "jobs", ["in_spec", "state", "index", "key"])


def downgrade() -> None:
    op.drop_index("ix_jobs_spec_state_index", table_name="jobs")
