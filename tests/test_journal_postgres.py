"""The request journal of a PostgreSQL store: a file in the results folder, shared by runners.

A runner replays only the entries of runs that died; a live run's entries wait for that run.
Runs when COMFYSWEEP_TEST_POSTGRES_URL is set (each test gets a schema of its own).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.store import JobState, Store
from orchestrator.store.journal import PG_FILE, RequestJournal
from tests.test_store import MODEL, make_jobs
from tests.test_store_postgres import admin, target  # noqa: F401  (fixtures)
from tests.waiting import wait_for

pytestmark = pytest.mark.postgres


def test_a_runner_replays_the_entries_of_a_dead_run_only(target: str, tmp_path: Path) -> None:  # noqa: F811
    with Store.open(target) as first, Store.open(target) as second:
        first.sync_jobs(make_jobs(3), MODEL)
        with first.lock("first runner"):
            journal = RequestJournal.beside(first, tmp_path)
            assert journal.path == tmp_path / PG_FILE
            keys = []
            for row in first.claim(2):  # answered, but the store refused both request ids
                journal.append(
                    row.key, f"r-{row.key}", model=MODEL, attempt=row.attempts, run=first.run_id
                )
                keys.append(row.key)
            with second.lock("second runner"):
                theirs = RequestJournal.beside(second, tmp_path)
                assert theirs.replay(second) == []  # the first runner is alive: its to record
                assert len(theirs.entries()) == 2
                run = first.run_id
                assert run is not None
                first.close()  # its session dies (SIGKILL, lost connection)
                # The server frees a closed session's locks a moment later: wait for that.
                wait_for(lambda: not second.run_alive(run), "the first run's session to end")
                assert len(theirs.replay(second)) == 2
                for key in keys:
                    row = second.get(key)
                    assert row is not None
                    assert (row.state, row.request_id) == (JobState.QUEUED, f"r-{key}")
                assert not journal.path.exists()
