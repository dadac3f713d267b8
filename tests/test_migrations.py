"""Migrations: the migrated schema is the declared one, newer stores are refused untouched, and a
process killed mid-migration leaves a store that opens cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.canonical import canonical_json, job_key
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
from tests.test_store import MODEL, FakeJob, make_jobs
from tests.test_store_blobs import assert_exact, data_uri
from tests.waiting import wait_for


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

# A revision after the head this code knows (what a newer comfysweep would ship).
NEXT_REVISION = f"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "9000_test"
down_revision = "{SCHEMA_REVISION}"
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
        # The file is touched with the migration applied, uncommitted.
        wait_for(ready.exists, "the opener reaching the migration", proc=proc)
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
    (newer / "versions" / "9000_test.py").write_text(NEXT_REVISION)

    open_and_kill(path, tmp_path, str(newer), "9000_test")
    assert revision_of(path) == SCHEMA_REVISION
    with Store.open(path) as store:  # this code still opens it, as it was
        assert store.counts()["pending"] == 2
        assert store.counts()["submitting"] == 1
    with sqlite3.connect(path) as raw:
        assert "note" not in {row[1] for row in raw.execute("PRAGMA table_info(jobs)")}
    raw.close()

    subprocess.run([sys.executable, "-c", OPENER, str(path), str(newer), "9000_test"], check=True)
    assert revision_of(path) == "9000_test"
    with sqlite3.connect(path) as raw:
        notes = raw.execute("SELECT note, count(*) FROM jobs GROUP BY note").fetchall()
    raw.close()
    assert notes == [("migrated", 3)]
    with pytest.raises(StoreError, match="written by a newer comfysweep"):
        Store.open(path)


def store_at_0001(url: str, jobs: list[dict[str, Any]]) -> None:
    """A store as comfysweep wrote it at schema 0001: inputs inline, data: URIs and all."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0001")
        for i, inputs in enumerate(jobs):
            conn.execute(
                sa.text(
                    'INSERT INTO jobs (key, "index", model_id, inputs, repeat, state, attempts,'
                    " outputs, in_spec, created_at, updated_at) VALUES (:key, :index, :model,"
                    " :inputs, 0, 'pending', 0, '[]', true, '2026-11-01 10:00:00',"
                    " '2026-11-01 10:00:00')"
                ),
                {
                    "key": job_key(MODEL, inputs),
                    "index": i,
                    "model": MODEL,
                    "inputs": canonical_json(inputs),
                },
            )
    engine.dispose()


def test_an_0001_store_with_inline_images_upgrades_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    image = data_uri(1)
    old = [{"image": image, "56_text": f"take {i}"} for i in range(3)]
    store_at_0001(f"sqlite:///{path}", old)
    open_and_kill(path, tmp_path)  # killed inside 0001 -> 0002: nothing changed
    assert revision_of(path) == "0001"

    new = [*old, {"image": image, "56_text": "take 3"}]
    jobs = [
        FakeJob(job_key(MODEL, v), i, inputs=v, sources={"image": "fox.png"})
        for i, v in enumerate(new)
    ]
    with Store.open(path) as store:
        assert revision_of(path) == SCHEMA_REVISION
        assert store.counts()["pending"] == 3
        for job in jobs[:3]:  # inline, as they were
            assert_exact(store.get(job.key), job)
        assert store.sync_jobs(jobs, MODEL).new == 1
        rows = list(store.jobs())
    assert [r.sources for r in rows] == [{"image": "fox.png"}] * 4  # old rows take the spec's
    for row, job in zip(rows, jobs, strict=True):
        assert_exact(row, job)
    with sqlite3.connect(path) as raw:
        refs = raw.execute("SELECT count(blob_refs), count(*) FROM jobs").fetchone()
        blobs = raw.execute("SELECT count(*) FROM blobs").fetchone()
    raw.close()
    assert (refs, blobs) == ((1, 4), (1,))  # old rows stay inline; the new one refers
    assert schema_diffs(f"sqlite:///{path}") == []


def test_downgrade_puts_blobs_back_inline(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    inputs = {"image": data_uri(2), "56_text": "a fox"}
    job = FakeJob(job_key(MODEL, inputs), 0, inputs=inputs)
    with Store.open(path) as store:
        store.sync_jobs([job], MODEL)
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.downgrade(_config(conn), "0001")
    engine.dispose()
    with sqlite3.connect(path) as raw:
        (text,) = raw.execute("SELECT inputs FROM jobs").fetchone()
    raw.close()
    assert text == canonical_json(inputs)
    with Store.open(path) as store:  # up again: still readable, inline
        assert_exact(store.get(job.key), job)


def test_an_0002_store_with_orphaned_jobs_upgrades_to_the_spec_state_index(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0002")
    engine.dispose()
    with sqlite3.connect(path) as raw:
        for i in range(4):  # jobs 0-1 left the spec: orphaned, pending
            raw.execute(
                'INSERT INTO jobs (key, "index", model_id, inputs, repeat, state, attempts,'
                " outputs, in_spec, created_at, updated_at) VALUES (?, ?, ?, '{}', 0, 'pending',"
                " 0, '[]', ?, '2026-11-01 10:00:00', '2026-11-01 10:00:00')",
                (f"job-{i}", i, MODEL, i >= 2),
            )
        indexes = {r[1] for r in raw.execute("PRAGMA index_list(jobs)")}
    raw.close()
    assert "ix_jobs_spec_state_index" not in indexes
    assert revision_of(path) == "0002"
    with Store.open(path) as store:
        assert revision_of(path) == SCHEMA_REVISION
        assert sum(store.counts(in_spec=False).values()) == 2
        assert [r.key for r in store.claim(10)] == ["job-2", "job-3"]
    assert schema_diffs(f"sqlite:///{path}") == []
