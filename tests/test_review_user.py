"""What a new user hit following the README, each pinned by a test."""

from __future__ import annotations

from pathlib import Path

from orchestrator.grid import iter_jobs
from orchestrator.progress import Snapshot
from orchestrator.spec import load_spec
from orchestrator.store import JobState, Store

from .sweeps import write_spec


def test_a_bulk_cancel_does_not_count_in_the_rate_status_shows(tmp_path: Path) -> None:
    # `cancel --where` on 42 pending jobs made status say 286 jobs/min and an ETA of 12 s for a
    # run doing 60 a minute: a cancelled job is no work finished.
    spec = load_spec(write_spec(tmp_path))
    with Store.open(tmp_path / "s.db") as db, db.lock(owner="test"):
        db.sync_jobs(iter_jobs(spec), spec.model)
        keys = [row.key for row in db.jobs()]
        db.cancel_pending(keys[:2], request=False)
        assert db.finish_times(scan=1000) == ([], None)


def test_a_bulk_cancel_does_not_count_in_the_rate_a_run_prints() -> None:
    snapshot = Snapshot(counts={"pending": 60, "done": 10})
    snapshot.worked_at_start = snapshot.worked
    snapshot.counts = {"pending": 18, "done": 10, "cancelled": 42}
    assert snapshot.per_minute() == 0.0
    assert snapshot.eta_seconds() is None
    assert snapshot.finished == 52  # the progress line still counts them as finished
    snapshot.counts = {"pending": 17, "done": 11, "cancelled": 42}
    assert snapshot.per_minute() > 0.0
    assert JobState.CANCELLED.value == "cancelled"
