"""Alembic environment for the job store, driven only by `orchestrator.store.schema.migrate`.

The caller hands over a connection that is already inside a transaction (SQLite: BEGIN IMMEDIATE;
PostgreSQL: holding an advisory lock), so every migration and alembic's version bump commit
together or not at all: a process killed mid-migration leaves the store at its previous version.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from alembic import context

from orchestrator.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("comfysweep migrations run only through Store.open()")

if connection.dialect.name == "sqlite":
    # A batch migration rebuilds a table (copy, drop, rename); foreign keys are checked at the
    # commit, against the rebuilt tables, not halfway through. Resets itself at the commit.
    connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")

context.configure(
    connection=connection,
    target_metadata=metadata,
    transactional_ddl=True,
    # SQLite cannot ALTER most things; batch mode rebuilds the table inside the transaction.
    render_as_batch=True,
)
# The connection is inside the caller's transaction, so this is a no-op context: nothing here
# commits; Store.open() commits after the version bump.
with context.begin_transaction():
    context.run_migrations()
    # Test hook: lets a test SIGKILL the process with the migration applied but not committed.
    _pause = os.environ.get("COMFYSWEEP_TEST_MIGRATION_PAUSE")
    if _pause:
        Path(_pause).touch()
        time.sleep(600)
