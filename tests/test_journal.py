"""A paid answer the store cannot record: kept in a journal and in memory, retried, never lost.

The run tests hold the SQLite file with a real EXCLUSIVE lock from another connection right after
a submit is answered (or make the store refuse the write), then let it go; the replay tests write
the journal a killed run leaves and start again.
"""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator import runner as runner_module
from orchestrator.client import ModelApiClient, Submitted
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import StoreError
from orchestrator.store import JobState, Store, schema
from orchestrator.store.batch import Write
from orchestrator.store.journal import RequestJournal
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import SPEC, run_until_killed, write_spec
from .test_store import MODEL, make_jobs
from .waiting import wait_for

DRIVER = Path(__file__).with_name("kill_driver.py")

S = JobState


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=500.0, workers=4)) as emu:
        yield emu


def store_file(tmp_path: Path) -> Path:
    return tmp_path / "results" / "grid" / "comfysweep.db"


def journal_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def paid_once(emu: Emulator, jobs: int = 4) -> None:
    ledger = emu.ledger()
    assert len(ledger["jobs"]) == jobs
    assert set(ledger["submissions_by_input"].values()) == {1}


def row_of(db: Store, request_id: str) -> Any:
    (row,) = [r for r in db.jobs() if r.request_id == request_id]
    return row


def test_a_store_locked_right_after_a_submit_answer_still_records_the_paid_job(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 100)  # the store gives up on the lock at once
    spec = write_spec(tmp_path)
    path = store_file(tmp_path)
    journal = Path(f"{path}.requests")
    held: list[str] = []
    threads: list[threading.Thread] = []
    real_submit = ModelApiClient.submit

    def release_once_journaled(blocker: sqlite3.Connection, request_id: str) -> None:
        try:  # released in any case: a wait that fails shows in the run's own assertions
            wait_for(lambda: request_id in journal_text(journal), "the request id journaled")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Submitted:
        answer = await real_submit(self, model_id, inputs)
        if not held:  # another program takes the file before the answer is recorded
            held.append(answer.request_id)
            blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN EXCLUSIVE")
            thread = threading.Thread(target=release_once_journaled, args=(blocker, held[0]))
            thread.start()
            threads.append(thread)
        return answer

    monkeypatch.setattr(ModelApiClient, "submit", submit)
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
    )
    for thread in threads:
        thread.join()
    assert report.complete, report
    assert any(f"cannot record request {held[0]}" in m for m in report.messages)
    assert any(f"request {held[0]} recorded" in m for m in report.messages)
    paid_once(emulator)
    assert not journal.exists()  # emptied once the store took the id
    with Store.open(path, readonly=True) as db:
        row = row_of(db, held[0])
        assert row.state is S.DONE
        assert [e.to_state for e in db.events(row.key)][:2] == [S.SUBMITTING, S.QUEUED]


class Refusing:
    """A store that refuses to record the first answered job until ``until`` holds (the whole
    transaction its write is in: Store.apply, which transitions and group commits go through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, until: Any) -> None:
        self.key: str | None = None
        self.refused = 0
        real = Store.apply

        def apply(store: Store, writes: Sequence[Write]) -> Any:
            for w in writes:
                if w.to is S.QUEUED and self.key in (None, w.key):
                    self.key = w.key
                    if not until(store, self.refused):
                        self.refused += 1
                        raise StoreError(f"store {store.name}: database or disk is full")
            return real(store, writes)

        monkeypatch.setattr(Store, "apply", apply)


def test_no_new_submit_leaves_until_the_refused_request_id_is_recorded(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store refuses the first job's id until another job is done (its slot is free again),
    # and once more after that: a submit loop that ignored the waiting id would claim a job then.
    seen_done: list[int] = []

    def until(store: Store, refused: int) -> bool:
        if not seen_done and next(iter(store.jobs([S.DONE])), None) is not None:
            seen_done.append(refused)
        return bool(seen_done) and refused > seen_done[0]

    refusing = Refusing(monkeypatch, until)
    spec = write_spec(tmp_path)
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(concurrency=2, poll_interval=0.02),
    )
    assert report.complete, report
    paid_once(emulator)
    with Store.open(store_file(tmp_path), readonly=True) as db:
        events = [e for row in db.jobs() for e in db.events(row.key)]
    (recorded,) = [e for e in events if e.key == refusing.key and e.to_state is S.QUEUED]
    claims = sorted(e.id for e in events if e.to_state is S.SUBMITTING)
    # The first two claims came before the refusal; every later one after the id was recorded.
    assert len(claims) == 4
    assert all(claim > recorded.id for claim in claims[2:])


def test_a_journal_on_a_full_disk_keeps_the_id_in_memory_until_the_store_takes_it(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RequestJournal, "append", full)
    refusing = Refusing(monkeypatch, lambda store, refused: refused >= 3)
    spec = write_spec(tmp_path)
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
    )
    assert report.complete, report
    assert refusing.refused == 3
    assert any("kept in memory only" in m for m in report.messages)
    paid_once(emulator)


# -- replay at start-up -------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store.db") as db, db.lock("test"):
        db.sync_jobs(make_jobs(3), MODEL)
        yield db


def answered(store: Store, journal: RequestJournal, n: int) -> list[str]:
    """Claim ``n`` jobs and journal an answer for each, as a killed run (0) the store refused."""
    keys = []
    for row in store.claim(n):
        journal.append(row.key, f"req-{row.key}", model=MODEL, attempt=row.attempts, run=0)
        keys.append(row.key)
    return keys


def test_replay_moves_a_journaled_job_to_queued_and_empties_the_journal(
    store: Store, tmp_path: Path
) -> None:
    journal = RequestJournal.beside(store, tmp_path)
    assert journal.path == tmp_path / "store.db.requests"
    (key,) = answered(store, journal, 1)
    lines = journal.replay(store)
    assert lines == [f"job {key[:10]}: request id req-{key} recovered from {journal.path}"]
    row = store.get(key)
    assert row is not None
    assert (row.state, row.request_id) == (S.QUEUED, f"req-{key}")
    assert not journal.path.exists()
    assert journal.replay(store) == []


def test_replay_after_a_kill_mid_replay_moves_the_rest_and_nothing_twice(
    store: Store, tmp_path: Path
) -> None:
    journal = RequestJournal.beside(store, tmp_path)
    first, second = answered(store, journal, 2)
    # A replay killed after its first commit: the job moved, the journal still lists both.
    store.transition(first, S.QUEUED, request_id=f"req-{first}")
    before = len(store.events(first))
    assert journal.replay(store) == [
        f"job {second[:10]}: request id req-{second} recovered from {journal.path}"
    ]
    assert len(store.events(first)) == before
    assert {store.get(k).state for k in (first, second)} == {S.QUEUED}  # type: ignore[union-attr]


def test_replay_drops_outdated_entries_and_keeps_other_runs_and_stores(
    store: Store, tmp_path: Path
) -> None:
    journal = RequestJournal.beside(store, tmp_path)
    (old,) = answered(store, journal, 1)
    store.transition(old, S.UNKNOWN)
    store.transition(old, S.PENDING)
    store.claim(1)  # a later attempt of the same job: the old answer is not its answer
    assert store.run_id is not None
    (live,) = [r.key for r in store.claim(1)]
    journal.append(live, "req-live", model=MODEL, attempt=1, run=store.run_id)
    RequestJournal(journal.path, "another store").append(
        live, "req-other", model=MODEL, attempt=1, run=None
    )
    with journal.path.open("a") as f:
        f.write('{"key": "torn by a ki')  # a kill mid-append
    assert journal.replay(store) == []
    assert {store.get(k).state for k in (old, live)} == {S.SUBMITTING}  # type: ignore[union-attr]
    kept = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [e["request_id"] for e in kept] == ["req-live", "req-other"]


def test_an_append_after_a_torn_line_stays_whole(tmp_path: Path) -> None:
    journal = RequestJournal(tmp_path / "x.db.requests", "x")
    journal.path.write_text('{"key": "torn by a ki')
    journal.append("job", "req-1", model=MODEL, attempt=1, run=None)
    assert [(e.key, e.request_id) for e in journal.entries()] == [("job", "req-1")]


def test_a_results_folder_moved_after_a_kill_still_replays_its_paid_answers(
    tmp_path: Path,
) -> None:
    # Copying the folder copies the sweep: the killed run's journal goes with its store.
    old = tmp_path / "old"
    old.mkdir()
    with Store.open(old / "comfysweep.db") as db, db.lock("killed run"):
        db.sync_jobs(make_jobs(2), MODEL)
        (key,) = answered(db, RequestJournal.beside(db, old), 1)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    with Store.open(new / "comfysweep.db") as db, db.lock("next run"):
        journal = RequestJournal.beside(db, new)
        assert len(journal.replay(db)) == 1
        row = db.get(key)
        assert row is not None
        assert (row.state, row.request_id) == (S.QUEUED, f"req-{key}")
    assert not journal.path.exists()


def test_a_journal_of_another_store_copied_beside_this_one_is_never_applied(
    tmp_path: Path,
) -> None:
    # Two sweeps with the same job keys, each with job 1 submitting in attempt 1.
    stores = {}
    for name in ("theirs", "ours"):
        folder = tmp_path / name
        folder.mkdir()
        with Store.open(folder / "comfysweep.db") as db, db.lock("killed run"):
            db.sync_jobs(make_jobs(2), MODEL)
            stores[name] = answered(db, RequestJournal.beside(db, folder), 1)
    assert stores["theirs"] == stores["ours"]
    ours = tmp_path / "ours" / "comfysweep.db.requests"
    ours.unlink()
    shutil.copy(tmp_path / "theirs" / "comfysweep.db.requests", ours)  # a stale copy
    with Store.open(tmp_path / "ours" / "comfysweep.db") as db, db.lock("next run"):
        journal = RequestJournal.beside(db, tmp_path / "ours")
        assert journal.replay(db) == []
        row = db.get(stores["ours"][0])
        assert row is not None
        assert (row.state, row.request_id) == (S.SUBMITTING, None)
    assert ours.exists()  # another store's paid answer: left alone, never deleted


def test_a_journal_left_by_a_deleted_store_is_not_applied_to_a_new_one_at_its_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "comfysweep.db"
    with Store.open(path) as db, db.lock("killed run"):
        db.sync_jobs(make_jobs(2), MODEL)
        (key,) = answered(db, RequestJournal.beside(db, tmp_path), 1)
    for stale in tmp_path.glob("comfysweep.db*"):
        if stale.suffix != ".requests":
            stale.unlink()  # the user starts the sweep over; the journal stays behind
    with Store.open(path) as db, db.lock("new sweep"):
        db.sync_jobs(make_jobs(2), MODEL)
        (row,) = db.claim(1)  # the same key, attempt 1, this store's own submit in flight
        assert row.key == key
        assert RequestJournal.beside(db, tmp_path).replay(db) == []
        again = db.get(key)
        assert again is not None
        assert (again.state, again.request_id) == (S.SUBMITTING, None)


# -- a journal path someone else put there ------------------------------------------------------


def test_a_symlinked_journal_is_never_followed_out(store: Store, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    journal = RequestJournal.beside(store, tmp_path)
    journal.path.symlink_to(victim)
    (row,) = store.claim(1)  # the runner keeps the id in memory
    with pytest.raises(OSError, match="symbolic links"):
        journal.append(row.key, "req-1", model=MODEL, attempt=row.attempts, run=None)
    with pytest.raises(StoreError, match="symbolic link") as caught:
        journal.replay(store)
    assert "\n" not in str(caught.value)
    assert victim.read_text() == "precious\n"
    assert journal.path.is_symlink()  # not ours to delete either


def test_a_symlink_at_the_rewrite_s_temporary_name_is_never_written_through(
    store: Store, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    journal = RequestJournal.beside(store, tmp_path)
    first, second = answered(store, journal, 2)
    journal.path.with_name(journal.path.name + ".tmp").symlink_to(victim)
    journal.forget([(first, f"req-{first}")])
    assert victim.read_text() == "precious\n"
    assert [e.key for e in journal.entries()] == [second]


def test_a_folder_at_the_journal_path_is_one_line(store: Store, tmp_path: Path) -> None:
    journal = RequestJournal.beside(store, tmp_path)
    journal.path.mkdir()
    (row,) = store.claim(1)
    with pytest.raises(OSError, match="Is a directory"):
        journal.append(row.key, "req-1", model=MODEL, attempt=row.attempts, run=None)
    with pytest.raises(StoreError, match="not a file") as caught:
        journal.replay(store)
    assert "\n" not in str(caught.value)


def test_an_answer_journaled_by_a_run_that_dies_after_the_replay_is_still_recovered(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's race, played on SQLite: the replay leaves a live run's entry alone; that run
    dies before its orphan ``submitting`` job is adopted, and its entry must still count."""
    spec = write_spec(tmp_path, body=SPEC.replace("concurrency: 3", "concurrency: 1"))
    run_until_killed(DRIVER, spec, emulator, "journaled")
    journal = Path(f"{store_file(tmp_path)}.requests")
    (entry,) = [json.loads(line) for line in journal.read_text().splitlines()]
    monkeypatch.setattr(Store, "run_alive", lambda self, run: True)  # alive at the replay
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
    )
    assert report.complete, report
    paid_once(emulator)
    with Store.open(store_file(tmp_path), readonly=True) as db:
        row = db.get(entry["key"])
        assert row is not None
        assert (row.state, row.request_id) == (S.DONE, entry["request_id"])


def test_a_store_that_never_takes_a_journaled_id_stops_the_run_and_the_next_run_records_it(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_STORE_PATIENCE", 0.3)
    with monkeypatch.context() as refusing:
        Refusing(refusing, lambda store, refused: False)
        spec = write_spec(tmp_path)
        with pytest.raises(StoreError, match="the next run records it") as caught:
            run_sweep(
                spec,
                base_url=emulator.base_url,
                token=emulator.token,
                overrides=Overrides(poll_interval=0.02),
            )
    assert "\n" not in str(caught.value)
    assert Path(f"{store_file(tmp_path)}.requests").exists()
    fast = Overrides(poll_interval=0.02)
    report = run_sweep(spec, base_url=emulator.base_url, token=emulator.token, overrides=fast)
    assert report.complete, report
    assert any("recovered from" in m for m in report.messages)
    paid_once(emulator)


def test_a_forged_or_mistyped_entry_is_skipped_never_applied(store: Store, tmp_path: Path) -> None:
    journal = RequestJournal.beside(store, tmp_path)
    (row,) = store.claim(1)
    good = {
        "key": row.key,
        "model": MODEL,
        "attempt": row.attempts,
        "store": journal.store,
        "run": None,
        "at": "2026-11-30T00:00:00+00:00",
    }
    forged = [
        good | {"request_id": "x" * 65536},
        good | {"request_id": "req\nERROR forged run.log line"},
        good | {"request_id": ".."},  # requests/../status: another resource
        good | {"request_id": "req-1", "attempt": str(row.attempts)},
        good | {"request_id": 12345},
    ]
    journal.path.write_text("".join(json.dumps(e) + "\n" for e in forged))
    assert journal.entries() == []
    assert journal.replay(store) == []
    after = store.get(row.key)
    assert after is not None
    assert (after.state, after.request_id) == (S.SUBMITTING, None)
