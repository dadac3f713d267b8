"""Migrations: the migrated schema is the declared one, newer stores are refused untouched, and a
process killed mid-migration leaves a store that opens cleanly."""

from __future__ import annotations

import os
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
from orchestrator.store.schema import _config, head_revision, script_directory
from orchestrator.store.tables import metadata


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


def test_one_linear_history() -> None:
    script = script_directory()
    assert len(script.get_heads()) == 1
    assert script.get_base() == "0001"


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
from orchestrator.store import Store
Store.open(sys.argv[1]).close()
"""


def test_a_kill_mid_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    ready = tmp_path / "inside-the-migration"
    env = {**os.environ, "COMFYSWEEP_TEST_MIGRATION_PAUSE": str(ready)}
    proc = subprocess.Popen([sys.executable, "-c", OPENER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # the child touches it with every table created, uncommitted
            assert proc.poll() is None, "the opener exited before reaching the migration"
            assert time.monotonic() < deadline, "the opener never reached the migration"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert revision_of(path) is None  # the rolled-back state: the version before the migration
    with Store.open(path) as store:
        store.set_meta("opened", True)
        assert store.counts()[JobState.PENDING] == 0
    assert revision_of(path) == head_revision()
    assert schema_diffs(f"sqlite:///{path}") == []
