"""Large data: URIs in a blobs table shared by jobs; the jobs' local file names (sources).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Existing rows keep their inline inputs (blob_refs NULL): the store reads both forms. Frozen, like
0001: types spelled out, nothing imported from the package.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    # Nullable columns go in with ALTER TABLE ADD COLUMN on both backends: no table rebuild, so
    # upgrading a store of many large inline inputs costs no copy.
    op.add_column("jobs", sa.Column("blob_refs", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("sources", sa.Text(), nullable=True))


def downgrade() -> None:
    # Put blobs back inline first: a downgraded store still holds every job's complete inputs.
    jobs = sa.table("jobs", sa.column("key"), sa.column("inputs"), sa.column("blob_refs"))
    blobs = sa.table("blobs", sa.column("sha256"), sa.column("data"))
    conn = op.get_bind()
    keys = conn.execute(sa.select(jobs.c.key).where(jobs.c.blob_refs.is_not(None))).scalars()
    for key in list(keys):
        inputs, refs = conn.execute(
            sa.select(jobs.c.inputs, jobs.c.blob_refs).where(jobs.c.key == key)
        ).one()
        values = json.loads(inputs)
        for name, sha in json.loads(refs).items():
            values[name] = conn.execute(
                sa.select(blobs.c.data).where(blobs.c.sha256 == sha)
            ).scalar_one()
        # orchestrator.canonical.canonical_json, spelled out (this file never imports the package)
        text = json.dumps(
            values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        conn.execute(jobs.update().where(jobs.c.key == key).values(inputs=text))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sources")
        batch.drop_column("blob_refs")
    op.drop_table("blobs")
