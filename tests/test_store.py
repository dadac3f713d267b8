"""The job store on SQLite: the state machine, events, claim, sync, streaming, lock, faults.

The backend-neutral tests take the ``target`` fixture; tests/test_store_postgres.py imports them and
runs them again on PostgreSQL.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import StoreError, StoreLockedError, TransitionError
from orchestrator.store import FINAL, TRANSITIONS, JobState, Store, schema
from orchestrator.store.store import PAGE, SYNC_BATCH

MODEL = "community/wan-2-2/vace-fun"
S = JobState


@dataclass(eq=False)
class FakeJob:
    """What orchestrator.grid.Job offers the store (weak-referenceable, for the memory test)."""

    key: str
    index: int
    model_id: str = MODEL
    inputs: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0
    sources: dict[str, str] = field(default_factory=dict)


def make_jobs(n: int, start: int = 0, *, prefix: str = "job") -> Iterator[FakeJob]:
    for i in range(start, start + n):
        yield FakeJob(f"{prefix}-{i:06d}", i - start, inputs={"56_text": f"prompt {i}"})


@pytest.fixture
def target(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    with Store.open(target) as s:
        yield s


def path_to(state: JobState) -> list[JobState]:
    """The shortest legal walk from pending to ``state`` (breadth-first over TRANSITIONS)."""
    paths = {S.PENDING: [S.PENDING]}
    queue = deque([S.PENDING])
    while queue:
        here = queue.popleft()
        for nxt in sorted(TRANSITIONS[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                queue.append(nxt)
    return paths[state]


def walk(store: Store, key: str, state: JobState) -> None:
    for step in path_to(state)[1:]:
        fields: dict[str, Any] = {"request_id": "req-1"} if step is S.QUEUED else {}
        store.transition(key, step, **fields)


def one_job(store: Store) -> str:
    store.sync_jobs(make_jobs(1), MODEL)
    return "job-000000"


LEGAL = [(a, b) for a in JobState for b in sorted(TRANSITIONS[a])]
ILLEGAL = [(a, b) for a in JobState for b in JobState if b not in TRANSITIONS[a]]


def test_every_state_is_reachable_and_final_states_never_submit_by_themselves() -> None:
    assert {s for s in JobState if path_to(s)} == set(JobState)
    for state in FINAL - {S.DONE}:
        assert TRANSITIONS[state] == {S.PENDING}  # `retry`, on purpose
    assert TRANSITIONS[S.DONE] == {S.SUCCEEDED, S.PENDING}  # download again; `--force`
    assert [s for s in JobState if S.SUBMITTING in TRANSITIONS[s]] == [S.PENDING]


@pytest.mark.parametrize(("source", "to"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_moves_and_appends_an_event(
    store: Store, source: JobState, to: JobState
) -> None:
    key = one_job(store)
    walk(store, key, source)
    before = store.events(key)
    row = store.transition(key, to, detail="because")
    assert row.state is to
    stored = store.get(key)
    assert stored is not None
    assert stored.state is to
    events = store.events(key)
    assert len(events) == len(before) + 1
    last = events[-1]
    assert (last.key, last.from_state, last.to_state, last.detail) == (key, source, to, "because")


@pytest.mark.parametrize(("source", "to"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_is_refused_and_changes_nothing(
    store: Store, source: JobState, to: JobState
) -> None:
    key = one_job(store)
    walk(store, key, source)
    before = store.get(key)
    events = store.events(key)
    with pytest.raises(TransitionError, match=f"is {source}: {source} -> {to} not allowed"):
        store.transition(key, to)
    assert store.get(key) == before
    assert store.events(key) == events


def test_expect_narrows_the_allowed_sources(store: Store) -> None:
    key = one_job(store)
    walk(store, key, S.QUEUED)
    with pytest.raises(TransitionError, match="queued -> succeeded expected running"):
        store.transition(key, S.SUCCEEDED, expect=[S.RUNNING])
    assert store.transition(key, S.SUCCEEDED, expect=[S.QUEUED, S.RUNNING]).state is S.SUCCEEDED


def test_transition_of_an_unknown_job_says_so(store: Store) -> None:
    with pytest.raises(TransitionError, match="has no job nope"):
        store.transition("nope", S.SUBMITTING)


def test_fields_and_timestamps_follow_the_target_state(store: Store) -> None:
    key = one_job(store)
    row = store.transition(key, S.SUBMITTING)
    assert (row.attempts, row.request_id, row.submitted_at) == (1, None, None)
    row = store.transition(key, S.QUEUED, request_id="req-9")
    assert row.request_id == "req-9"
    assert row.submitted_at is not None
    assert row.submitted_at.tzinfo is not None
    row = store.transition(key, S.RUNNING)
    assert row.started_at is not None
    assert row.finished_at is None
    outputs = [{"url": "https://x.runcomfy.net/a.mp4", "path": "a.mp4", "size": 3, "sha256": "ab"}]
    row = store.transition(
        key, S.SUCCEEDED, result={"status": "succeeded"}, cost=0.25, outputs=outputs
    )
    assert (row.result, row.cost, row.outputs) == ({"status": "succeeded"}, 0.25, outputs)
    assert row.finished_at is not None
    assert row.started_at is not None
    assert row.submitted_at is not None
    assert row.finished_at >= row.started_at >= row.submitted_at
    finished = row.finished_at
    row = store.transition(key, S.DONE)
    assert row.downloaded_at is not None
    assert row.downloaded_at >= finished
    assert row.inputs == {"56_text": "prompt 0"}
    assert [e.request_id for e in store.events(key)] == [None, "req-9", "req-9", "req-9", "req-9"]


def test_retry_starts_a_fresh_attempt_and_keeps_the_story(store: Store) -> None:
    key = one_job(store)
    walk(store, key, S.QUEUED)
    store.transition(key, S.FAILED, error={"error_code": 500001, "message": "boom"})
    row = store.transition(key, S.PENDING, detail="retry --failed")
    assert row.error == {"error_code": 500001, "message": "boom"}  # still shown until resubmitted
    row = store.transition(key, S.SUBMITTING)
    assert (row.attempts, row.error, row.request_id, row.submitted_at) == (2, None, None, None)
    assert "req-1" in [e.request_id for e in store.events(key)]


def test_unknown_field_is_a_bug_in_the_caller(store: Store) -> None:
    key = one_job(store)
    with pytest.raises(TypeError, match="not a job field: colour"):
        store.transition(key, S.SUBMITTING, colour="red")
    with pytest.raises(TypeError, match="not a job field: state"):
        store.update(key, state="done")


def test_update_sets_fields_without_an_event(store: Store) -> None:
    key = one_job(store)
    walk(store, key, S.SUCCEEDED)
    events = store.events(key)
    store.update(key, outputs=[{"url": "u", "path": "p", "size": 1, "sha256": "s"}])
    row = store.get(key)
    assert row is not None
    assert row.outputs == [{"url": "u", "path": "p", "size": 1, "sha256": "s"}]
    assert row.state is S.SUCCEEDED
    assert store.events(key) == events
    with pytest.raises(StoreError, match="has no job nope"):
        store.update("nope", cost=1.0)


def test_claim_takes_pending_spec_jobs_in_index_order(store: Store) -> None:
    assert store.claim(4) == []
    store.sync_jobs(make_jobs(10), MODEL)
    store.transition("job-000001", S.SUBMITTING)
    claimed = store.claim(3)
    assert [r.key for r in claimed] == ["job-000000", "job-000002", "job-000003"]
    assert {r.state for r in claimed} == {S.SUBMITTING}
    assert {r.attempts for r in claimed} == {1}
    assert store.events("job-000002")[-1].detail == "claimed"
    assert store.claim(0) == []
    # A pending job that left the spec is never submitted.
    store.sync_jobs(make_jobs(6), MODEL)
    assert [r.key for r in store.claim(100)] == ["job-000004", "job-000005"]
    assert store.claim(100) == []
    assert store.counts()["pending"] == 4


def test_sync_counts_new_jobs_renumbers_and_marks_the_spec(store: Store) -> None:
    assert (store.sync_jobs(make_jobs(5), MODEL).total, store.counts()["pending"]) == (5, 5)
    again = store.sync_jobs(make_jobs(5), MODEL)
    assert (again.total, again.new) == (5, 0)
    walk(store, "job-000003", S.QUEUED)
    # The edited spec: job 0 gone, jobs 3-4 kept, 5-6 new, order changed.
    edited = [FakeJob(f"job-{i:06d}", n) for n, i in enumerate([6, 4, 3, 5])]
    result = store.sync_jobs(edited, MODEL)
    assert (result.total, result.new) == (4, 2)
    rows = {r.key: r for r in store.jobs()}
    assert [(k, r.index) for k, r in rows.items() if r.in_spec] == [
        ("job-000006", 0),
        ("job-000004", 1),
        ("job-000003", 2),
        ("job-000005", 3),
    ]
    assert not rows["job-000000"].in_spec
    assert rows["job-000003"].state is S.QUEUED  # known keys keep their state
    assert sum(store.counts(in_spec=True).values()) == 4
    assert sum(store.counts().values()) == 7
    assert store.get_meta("model_id") == MODEL
    # Back to the first spec: job 0 returns to it, unchanged, nothing new.
    back = store.sync_jobs(make_jobs(5), MODEL)
    assert (back.total, back.new) == (5, 0)
    assert [r.key for r in store.jobs(in_spec=True)] == [f"job-{i:06d}" for i in range(5)]
    assert [r.index for r in store.jobs(in_spec=True)] == list(range(5))


def test_sync_rejects_a_job_of_another_model(store: Store) -> None:
    with pytest.raises(ValueError, match="is for other/model"):
        store.sync_jobs([FakeJob("k", 0, model_id="other/model")], MODEL)
    assert sum(store.counts().values()) == 0  # one transaction: nothing half-synced


def test_sync_takes_several_models_and_counts_each(store: Store) -> None:
    jobs = [FakeJob("a", 0), FakeJob("b", 1, model_id="other/model"), FakeJob("c", 2)]
    store.sync_jobs(jobs, (MODEL, "other/model"))
    assert store.get_meta("model_id") == MODEL  # the first model
    by_model = store.counts_by_model(in_spec=True)
    assert list(by_model) == [MODEL, "other/model"]
    assert by_model[MODEL]["pending"] == 2
    assert by_model["other/model"]["pending"] == 1
    assert set(by_model[MODEL]) == {s.value for s in JobState}


def test_sync_streams_without_holding_the_jobs(store: Store) -> None:
    alive: weakref.WeakSet[FakeJob] = weakref.WeakSet()
    most = 0

    def jobs() -> Iterator[FakeJob]:
        nonlocal most
        for job in make_jobs(5 * SYNC_BATCH):
            alive.add(job)
            most = max(most, len(alive))
            yield job

    assert store.sync_jobs(jobs(), MODEL).new == 5 * SYNC_BATCH
    assert most <= 2 * SYNC_BATCH + 1  # the batch being filled and the one just written


def test_jobs_stream_in_index_order_and_allow_writes_between_pages(store: Store) -> None:
    n = 2 * PAGE + 7
    store.sync_jobs(make_jobs(n), MODEL)
    for row in store.claim(PAGE + 3):
        assert row.state is S.SUBMITTING
    assert [r.index for r in store.jobs()] == list(range(n))
    # The resume pattern: rewrite states while iterating them.
    for row in store.jobs([S.SUBMITTING]):
        store.transition(row.key, S.UNKNOWN, expect=[S.SUBMITTING], detail="resumed")
    counts = store.counts()
    assert (counts["unknown"], counts["pending"], counts["submitting"]) == (
        PAGE + 3,
        n - PAGE - 3,
        0,
    )
    assert [r.index for r in store.jobs([S.PENDING, S.UNKNOWN], in_spec=True)] == list(range(n))


def test_counts_name_every_state(store: Store) -> None:
    assert store.counts() == {s.value: 0 for s in JobState}


def test_meta_holds_json_values(store: Store) -> None:
    assert store.get_meta("budget") is None
    store.set_meta("budget", {"max_cost": 12.5, "spent": [1, 2]})
    store.set_meta("budget", {"max_cost": 10.0})
    assert store.get_meta("budget") == {"max_cost": 10.0}


def test_lock_records_the_run_on_what_it_touches(store: Store) -> None:
    key = one_job(store)
    with store.lock("test run") as run_id:
        assert store.run_id == run_id
        row = store.transition(key, S.SUBMITTING)
        assert row.run_id == run_id
        assert store.events(key)[-1].run_id == run_id
        with pytest.raises(StoreError, match="already locked by this process"), store.lock("2"):
            pass
    assert store.run_id is None
    row = store.transition(key, S.PENDING)
    assert row.run_id == run_id  # the last run that touched it stays recorded
    with store.lock("next run") as second:
        assert second != run_id


def test_readonly_store_refuses_writes_and_closed_store_refuses_all(target: str) -> None:
    with Store.open(target) as writer:
        one_job(writer)
        with Store.open(target, readonly=True) as reader:
            assert reader.counts()["pending"] == 1
            with pytest.raises(StoreError, match="read-only"):
                reader.transition("job-000000", S.SUBMITTING)
            with pytest.raises(StoreError, match="read-only"):
                reader.claim(1)
            writer.transition("job-000000", S.SUBMITTING)
            row = reader.get("job-000000")
            assert row is not None
            assert row.state is S.SUBMITTING
    with pytest.raises(StoreError, match="is closed"):
        writer.counts()


# ---- SQLite only -------------------------------------------------------------------------------


def test_sqlite_store_is_in_wal_mode_with_foreign_keys(store: Store, target: str) -> None:
    one_job(store)
    with sqlite3.connect(target) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        raw.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute(
                "INSERT INTO events (job_key, to_state, at) VALUES ('nope', 'pending', '2026')"
            )


def test_a_busy_database_is_a_one_line_error_and_the_store_carries_on(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 50)
    with Store.open(target) as store:
        key = one_job(store)
        raw = sqlite3.connect(target, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")  # another writer that never lets go
        with pytest.raises(StoreError, match=f"store {target}: database is locked"):
            store.transition(key, S.SUBMITTING)
        raw.execute("ROLLBACK")
        raw.close()
        assert store.transition(key, S.SUBMITTING).attempts == 1
        assert len(store.events(key)) == 1


def test_two_stores_claiming_one_file_never_share_a_job(target: str) -> None:
    with Store.open(target) as s:
        s.sync_jobs(make_jobs(300), MODEL)
    taken: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def runner(n: int) -> None:
        try:
            with Store.open(target) as mine:
                while batch := mine.claim(8):
                    taken[n].extend(r.key for r in batch)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == [f"job-{i:06d}" for i in range(300)]


def test_readonly_reader_reads_while_a_writer_holds_the_write_lock(
    store: Store, target: str
) -> None:
    store.sync_jobs(make_jobs(3), MODEL)
    with Store.open(target, readonly=True) as reader:
        raw = sqlite3.connect(target, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("UPDATE jobs SET state = 'queued'")
        assert reader.counts()["pending"] == 3  # the last committed state, without waiting
        raw.execute("COMMIT")
        raw.close()
        assert reader.counts()["queued"] == 3


HOLDER = """
import signal, sys
from orchestrator.store import Store
store = Store.open(sys.argv[1])
with store.lock("comfysweep run"):
    print("locked", flush=True)
    signal.pause()  # held until the test kills this process
"""


def test_lock_held_by_another_process_names_it_and_dies_with_it(store: Store, target: str) -> None:
    one_job(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        host = socket.gethostname()
        expected = re.escape(f"locked by comfysweep run (held by pid {holder.pid} on host {host})")
        with pytest.raises(StoreLockedError, match=expected), store.lock("second run"):
            pass
        with Store.open(target, readonly=True) as reader:  # status still reads
            assert reader.counts()["pending"] == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    with store.lock("after the kill") as run_id:  # the kernel dropped the flock
        assert run_id > 0


WORKER = """
import sys
from orchestrator.store import JobState as S, Store
from tests.test_store import MODEL, make_jobs
store = Store.open(sys.argv[1])
with store.lock("worker"):
    store.sync_jobs(make_jobs(400), MODEL)
    while batch := store.claim(8):
        for row in batch:
            store.transition(row.key, S.QUEUED, request_id="r-" + row.key)
            store.transition(row.key, S.RUNNING)
            store.transition(row.key, S.SUCCEEDED, outputs=[{"path": row.key}])
            store.transition(row.key, S.DONE)
            print(row.key, flush=True)
"""


def test_a_kill_between_any_two_statements_leaves_states_and_events_agreeing(
    store: Store, target: str
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, target],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert worker.stdout is not None
        for _ in range(25):  # let it get well into the work, then kill it mid-stride
            assert worker.stdout.readline()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        worker.kill()
        worker.wait()
        assert worker.stdout is not None
        worker.stdout.close()
    with sqlite3.connect(target) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()
    counts = store.counts()
    assert counts["done"] >= 25
    assert sum(counts.values()) == 400
    for row in store.jobs():
        events = store.events(row.key)
        chain = [S.PENDING] + [e.to_state for e in events]
        assert [e.from_state for e in events] == chain[:-1]
        assert chain[-1] is row.state  # each state change and its event: both or neither
        if row.state is S.DONE:
            assert row.outputs == [{"path": row.key}]


def test_second_lock_in_one_process_names_this_pid(store: Store, target: str) -> None:
    with (
        Store.open(target) as other,
        store.lock("first"),
        pytest.raises(StoreLockedError, match=f"pid {os.getpid()} on host"),
        other.lock("second"),
    ):
        pass


def untouched(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(b"id,prompt\n1,a fox\n" * 20)
    before = untouched(path)
    with pytest.raises(StoreError, match=f"store {path} is not an SQLite database"):
        Store.open(path, readonly=readonly)
    assert untouched(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]


def test_another_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE users (id INTEGER)")
    raw.close()
    before = untouched(path)
    with pytest.raises(StoreError, match=f"store {path} is a database with other tables"):
        Store.open(path)
    assert untouched(path) == before


def test_claims_and_request_ids_commit_with_an_fsync(store: Store) -> None:
    """WAL + NORMAL survives a killed process, not a power cut: the money records get FULL."""
    store.sync_jobs(make_jobs(2), MODEL)
    assert store._conn is not None
    raw = store._conn.connection.driver_connection
    assert raw is not None
    synchronous = {1: "NORMAL", 2: "FULL"}
    (row,) = store.claim(1)
    assert synchronous[raw.execute("PRAGMA synchronous").fetchone()[0]] == "FULL"
    store.transition(row.key, S.PENDING)
    assert synchronous[raw.execute("PRAGMA synchronous").fetchone()[0]] == "NORMAL"
    store.transition(row.key, S.SUBMITTING)
    store.transition(row.key, S.QUEUED, request_id="r")
    assert synchronous[raw.execute("PRAGMA synchronous").fetchone()[0]] == "FULL"


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StoreError, match="cannot be opened") as caught:
        Store.open("postgresql+psycopg://sweeper:hunter2@127.0.0.1:1/sweeps")
    assert "hunter2" not in str(caught.value)
    assert "sweeper:***@127.0.0.1:1/sweeps" in str(caught.value)


def test_missing_and_misplaced_stores_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=f"no store at {tmp_path / 'x.db'}"):
        Store.open(tmp_path / "x.db", readonly=True)
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "missing" / "x.db")
    with pytest.raises(StoreError, match="is a directory"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="only SQLite files and postgresql"):
        Store.open("mysql://u@h/db")
    with pytest.raises(
        StoreError, match=re.escape("postgresql+psycopg://u@127.0.0.1:1/db cannot be opened")
    ):
        Store.open("postgresql://u@127.0.0.1:1/db")  # the driver we ship, not SQLAlchemy's default
    with pytest.raises(StoreError, match="PostgreSQL needs its driver"):
        Store.open("postgresql+pg8000://u@127.0.0.1:1/db")


def test_spent_sums_the_recorded_costs(store: Store) -> None:
    store.sync_jobs(make_jobs(3), MODEL)
    assert store.spent() == 0.0
    (row,) = store.claim(1)
    store.transition(row.key, JobState.QUEUED, request_id="r")
    store.transition(row.key, JobState.SUCCEEDED, cost=0.25)
    assert store.spent() == pytest.approx(0.25)


def test_on_sqlite_every_job_in_the_states_is_adopted(store: Store) -> None:
    store.sync_jobs(make_jobs(3), MODEL)
    with store.lock("runner"):
        claimed = store.claim(2)
    with store.lock("next runner"):
        adopted = list(store.adopt([JobState.SUBMITTING], where=lambda r: r.index == 0))
    assert [r.key for r in adopted] == [claimed[0].key]


def test_a_rating_is_kept_replaced_taken_back_and_a_pick_clears_its_row(store: Store) -> None:
    store.sync_jobs(make_jobs(3), MODEL)
    a, b, c = "job-000000", "job-000001", "job-000002"
    store.rate(a, "pick")
    store.rate(c, "down")
    store.rate(b, "pick", clear=[a, b, c])  # the pick of the row moves from a to b
    assert store.ratings() == {b: "pick", c: "down"}
    store.rate(b, "up")
    store.rate(c, None)
    assert store.ratings() == {b: "up"}


def test_a_rating_of_an_unknown_job_or_value_is_refused_and_changes_nothing(store: Store) -> None:
    store.sync_jobs(make_jobs(1), MODEL)
    with pytest.raises(StoreError, match="no job 'nope'"):
        store.rate("nope", "up")
    with pytest.raises(StoreError, match="rating 'meh' is not one of up, down, pick"):
        store.rate("job-000000", "meh")
    assert store.ratings() == {}


def test_jobs_cancelled_from_another_shell_are_not_counted_as_ended_by_the_run(
    store: Store, target: str
) -> None:
    """`runs` says what each run ended; a pending job a run once claimed, then cancelled by
    `cancel` from a shell without a run, was counted as ended by that run."""
    store.sync_jobs(make_jobs(2), MODEL)
    with store.lock("comfysweep run grid") as run:
        claimed = store.claim(2)
        for job in claimed:
            store.transition(job.key, S.PENDING)  # provably never sent: back to pending
        with Store.open(target) as shell:
            cancelled, _, _ = shell.cancel_pending([j.key for j in claimed], request=False)
        assert len(cancelled) == 2
        record = next(r for r in store.runs() if r.id == run)
        assert record.finished == 0
