"""Migrations: the migrated schema is the declared one, newer stores are refused untouched, and a
process killed mid-migration leaves a store that opens cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.errors import StoreError
from orchestrator.store import JobState, Store
from orchestrator.store.schema import (
    MIGRATIONS,
    SCHEMA_REVISION,
    _config,
    head_revision,
    script_directory,
)
from orchestrator.store.tables import metadata
from tests.test_store import MODEL, make_jobs


def schema_diffs(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def revision_of(path: Path) -> str | None:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alembic_version" not in tables:
            return None
        row = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def test_one_linear_history_whose_head_the_code_knows() -> None:
    script = script_directory()
    assert len(script.get_heads()) == 1
    assert script.get_base() == "0001"
    assert head_revision() == SCHEMA_REVISION  # bump SCHEMA_REVISION with every new migration


def test_migrated_schema_equals_the_declared_tables(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store.open(path).close()
    assert schema_diffs(f"sqlite:///{path}") == []
    assert revision_of(path) == head_revision()


def test_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store.open(path).close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.downgrade(_config(conn), "base")
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == {"alembic_version"}
    engine.dispose()
    with Store.open(path) as store:  # opens, and migrates back up
        assert store.counts()["pending"] == 0
    assert schema_diffs(f"sqlite:///{path}") == []


def test_a_store_from_a_newer_comfysweep_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store.open(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    raw.close()
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    for readonly in (False, True):
        with pytest.raises(StoreError, match="written by a newer comfysweep"):
            Store.open(path, readonly=readonly)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_readonly_open_of_an_unmigrated_store_asks_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.touch()
    with pytest.raises(StoreError, match="open it once for writing"):
        Store.open(path, readonly=True)
    assert path.read_bytes() == b""


OPENER = """
import sys
from pathlib import Path
from orchestrator.store import Store, schema
if len(sys.argv) > 2:  # play a newer comfysweep: migrations from another folder, a new head
    schema.MIGRATIONS = Path(sys.argv[2])
    schema.SCHEMA_REVISION = sys.argv[3]
Store.open(sys.argv[1]).close()
"""

NEXT_REVISION = """
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_test"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.execute("UPDATE jobs SET note = 'migrated'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("note")
"""


def open_and_kill(path: Path, tmp_path: Path, *extra: str) -> None:
    """Open ``path`` in a subprocess and SIGKILL it inside the migration, before the commit."""
    ready = tmp_path / "inside-the-migration"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "COMFYSWEEP_TEST_MIGRATION_PAUSE": str(ready)}
    proc = subprocess.Popen([sys.executable, "-c", OPENER, str(path), *extra], env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # touched with the migration applied, uncommitted
            assert proc.poll() is None, "the opener exited before reaching the migration"
            assert time.monotonic() < deadline, "the opener never reached the migration"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_a_kill_mid_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    open_and_kill(path, tmp_path)
    assert revision_of(path) is None  # the version before the migration: none
    with Store.open(path) as store:
        store.set_meta("opened", True)
        assert store.counts()[JobState.PENDING] == 0
    assert revision_of(path) == head_revision()
    assert schema_diffs(f"sqlite:///{path}") == []


def test_a_kill_mid_upgrade_keeps_the_old_schema_and_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store.open(path) as store:
        store.sync_jobs(make_jobs(3), MODEL)
        store.transition("job-000001", JobState.SUBMITTING)
    newer = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, newer, ignore=shutil.ignore_patterns("__pycache__"))
    (newer / "versions" / "0002_test.py").write_text(NEXT_REVISION)

    open_and_kill(path, tmp_path, str(newer), "0002_test")
    assert revision_of(path) == "0001"
    with Store.open(path) as store:  # this code still opens it, as it was
        assert store.counts()["pending"] == 2
        assert store.counts()["submitting"] == 1
    with sqlite3.connect(path) as raw:
        assert "note" not in {row[1] for row in raw.execute("PRAGMA table_info(jobs)")}
    raw.close()

    subprocess.run([sys.executable, "-c", OPENER, str(path), str(newer), "0002_test"], check=True)
    assert revision_of(path) == "0002_test"
    with sqlite3.connect(path) as raw:
        notes = raw.execute("SELECT note, count(*) FROM jobs GROUP BY note").fetchall()
    raw.close()
    assert notes == [("migrated", 3)]
    with pytest.raises(StoreError, match="written by a newer comfysweep"):
        Store.open(path)
