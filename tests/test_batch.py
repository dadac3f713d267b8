"""Batched claims and the group commit (orchestrator/store/batch.py): the money rule holds.

A batch of claims is committed, reservations and all, before the first of its POSTs; claims follow
rank and stop at the first job that does not fit the cap; one refused write fails only its writer;
a store that refuses a batch fails every writer of it, and each tries again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import StoreBusyError, StoreError, TransitionError
from orchestrator.store import JobState, Store
from orchestrator.store.batch import GroupCommit, Write
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .test_store import MODEL
from .test_store_postgres import admin, target  # noqa: F401  (fixtures)

S = JobState


@dataclass(eq=False)
class RankedJob:
    key: str
    index: int
    rank: int
    model_id: str = MODEL
    inputs: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0
    sources: dict[str, str] = field(default_factory=dict)


def ranked(n: int) -> Iterator[RankedJob]:
    """Jobs whose run order (rank) is the reverse of their keys' order."""
    for i in range(n):
        yield RankedJob(f"job-{i}", i, rank=n - i, inputs={"56_text": f"prompt {i}"})


def price(cents: Mapping[str, int]) -> Any:
    def estimate(inputs: Mapping[str, Any]) -> float | None:
        found = cents.get(str(inputs.get("56_text")))
        return None if found is None else found / 100

    return estimate


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store.db") as db, db.lock("test"):
        db.sync_jobs(ranked(5), MODEL)
        yield db


# -- claims ---------------------------------------------------------------------------------


def test_a_batch_of_claims_follows_rank_and_stops_at_the_first_job_over_the_cap(
    store: Store,
) -> None:
    # Run order: job-4 ($0.30), job-3 ($0.30), job-2 ($0.50), job-1 ($0.10), job-0 ($0.10).
    estimate = price(
        {"prompt 4": 30, "prompt 3": 30, "prompt 2": 50, "prompt 1": 10, "prompt 0": 10}
    )
    got = store.claim_batch(estimate, cap=1.00, limit=10)
    # job-2 would make $1.10: refused, and the cheaper jobs after it never jump the queue.
    assert [r.key for r in got.rows] == ["job-4", "job-3"]
    assert (got.refused, got.estimate) == ("budget", 0.50)
    assert got.ledger.reserved_usd == pytest.approx(0.60)
    assert got.ledger.in_flight == 2
    assert store.counts()["pending"] == 3
    assert sorted(a.job_key for a in store.attempts()) == ["job-3", "job-4"]
    again = store.claim_batch(estimate, cap=1.00, limit=10)
    assert again.rows == []
    assert again.refused == "budget"


def test_a_batch_of_claims_takes_what_fits_up_to_its_limit_then_the_next_batch_goes_on(
    store: Store,
) -> None:
    estimate = price({f"prompt {i}": 25 for i in range(5)})
    first = store.claim_batch(estimate, cap=1.00, limit=3)
    assert [r.key for r in first.rows] == ["job-4", "job-3", "job-2"]
    assert first.refused is None
    second = store.claim_batch(estimate, cap=1.00, limit=3)
    assert [r.key for r in second.rows] == ["job-1"]  # $1.00 reached: job-0 waits
    assert second.refused == "budget"
    assert store.ledger().committed_usd <= 1.00


def test_a_batch_of_claims_stops_at_a_job_without_price_or_a_full_shared_concurrency(
    store: Store,
) -> None:
    estimate = price({"prompt 4": 10, "prompt 3": 10, "prompt 1": 10})  # job-2 has no price
    got = store.claim_batch(estimate, cap=5.00, limit=10)
    assert [r.key for r in got.rows] == ["job-4", "job-3"]
    assert got.refused == "price"
    busy = store.claim_batch(lambda _: 0.1, cap=None, concurrency=3, limit=10)
    assert [r.key for r in busy.rows] == ["job-2"]  # two in flight already, three allowed
    assert busy.refused == "busy"


@pytest.mark.postgres
def test_runners_claiming_batches_on_postgresql_take_each_job_once_and_never_pass_the_cap(
    target: str,  # noqa: F811
) -> None:
    with Store.open(target) as db:
        db.sync_jobs(ranked(12), MODEL)
    taken: list[str] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            with Store.open(target) as mine:
                while rows := mine.claim_batch(lambda _: 0.10, cap=0.85, limit=3).rows:
                    taken.extend(r.key for r in rows)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(taken) == len(set(taken)) == 8  # $0.80: a ninth job would make $0.90
    with Store.open(target, readonly=True) as db:
        assert db.ledger().reserved_usd == pytest.approx(0.80)
        assert db.ledger().in_flight == 8
        assert sorted(a.job_key for a in db.attempts()) == sorted(taken)


# -- the group commit -----------------------------------------------------------------------


async def _together(writes: GroupCommit, items: Sequence[Write]) -> list[Any]:
    """Hand ``items`` to the group commit from one task each, at once; each one's outcome."""
    out: list[Any] = [None] * len(items)

    async def one(n: int, item: Write) -> None:
        try:
            out[n] = await writes.write(item)
        except StoreError as exc:
            out[n] = exc

    async with anyio.create_task_group() as tg:
        for n, item in enumerate(items):
            tg.start_soon(one, n, item)
    return out


@pytest.mark.anyio
async def test_writes_of_several_jobs_commit_in_one_transaction_a_refused_one_fails_alone(
    store: Store,
) -> None:
    a, b, c = (r.key for r in store.claim_batch(lambda _: 0.1, cap=None, limit=3).rows)
    writes = GroupCommit(store)
    got = await _together(
        writes,
        [
            Write(a, S.QUEUED, {"request_id": "req-a"}),
            Write(b, S.RUNNING),  # submitting -> running: not a legal move
            Write(c, S.QUEUED, {"request_id": "req-c"}),
        ],
    )
    assert writes.batches == 1
    assert [type(x).__name__ for x in got] == ["JobRow", "TransitionError", "JobRow"]
    assert isinstance(got[1], TransitionError)
    states = {r.key: (r.state, r.request_id) for r in store.jobs()}
    assert states[a] == (S.QUEUED, "req-a")
    assert states[b] == (S.SUBMITTING, None)  # nothing of its refused write landed
    assert states[c] == (S.QUEUED, "req-c")
    assert [e.to_state for e in store.events(b)] == [S.SUBMITTING]


@pytest.mark.anyio
async def test_a_batch_with_a_request_id_is_committed_durably_and_one_without_is_not(
    store: Store,
) -> None:
    a, b = (r.key for r in store.claim_batch(lambda _: 0.1, cap=None, limit=2).rows)
    raw = store._conn.connection.driver_connection  # type: ignore[union-attr]
    said: list[str] = []
    raw.set_trace_callback(said.append)
    try:
        writes = GroupCommit(store)
        batches = [
            [Write(a, None, {"error": "note"}), Write(b, None, {"error": "note"})],
            [Write(a, S.QUEUED, {"request_id": "r-a"}), Write(b, S.UNKNOWN)],
            [Write(a, S.RUNNING), Write(b, None, {"error": "note"})],
        ]
        modes = []
        for batch in batches:
            said.clear()
            await _together(writes, batch)
            modes.append([line for line in said if line.startswith(("PRAGMA", "BEGIN"))])
    finally:
        raw.set_trace_callback(None)
    assert modes == [
        ["PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE"],  # the claims' FULL was in force
        ["PRAGMA synchronous = FULL", "BEGIN IMMEDIATE"],
        ["PRAGMA synchronous = NORMAL", "BEGIN IMMEDIATE"],
    ]
    assert writes.batches == 3


@pytest.mark.anyio
async def test_a_store_that_refuses_the_batch_fails_every_writer_and_a_second_try_lands(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [r.key for r in store.claim_batch(lambda _: 0.1, cap=None, limit=3).rows]
    real = Store.apply
    refused: list[int] = []

    def apply(self: Store, writes: Sequence[Write]) -> Any:
        if not refused:
            refused.append(len(writes))
            raise StoreBusyError(f"store {self.name}: database is locked")
        return real(self, writes)

    monkeypatch.setattr(Store, "apply", apply)
    writes = GroupCommit(store)
    items = [Write(k, S.QUEUED, {"request_id": f"req-{k}"}) for k in keys]
    got = await _together(writes, items)
    assert refused == [3]
    assert all(isinstance(x, StoreBusyError) for x in got)
    assert len({id(x) for x in got}) == 3  # each writer raises its own
    assert store.counts()["submitting"] == 3  # nothing of the batch landed
    again = await _together(writes, items)
    assert [r.state for r in again] == [S.QUEUED] * 3


# -- a run ----------------------------------------------------------------------------------


def _on_disk(path: Path) -> tuple[int, int, float, int]:
    """Jobs submitting, open attempts, reserved dollars and jobs in flight, read by a connection
    of its own: only what is committed."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        (submitting,) = db.execute(
            "SELECT count(*) FROM jobs WHERE state = 'submitting'"
        ).fetchone()
        (open_,) = db.execute("SELECT count(*) FROM attempts WHERE closed_at IS NULL").fetchone()
        reserved, flight = db.execute("SELECT reserved_usd, in_flight FROM ledger").fetchone()
    db.close()
    return submitting, open_, reserved, flight


def test_a_run_commits_its_batch_of_claims_before_the_first_post_and_retries_a_refused_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(tmp_path)  # 4 jobs, concurrency 3
    db_file = tmp_path / "results" / "grid" / "comfysweep.db"
    at_first_post: list[tuple[int, int, float, int]] = []
    real_submit = ModelApiClient.submit

    async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Any:
        if not at_first_post:
            at_first_post.append(_on_disk(db_file))
        return await real_submit(self, model_id, inputs)

    monkeypatch.setattr(ModelApiClient, "submit", submit)
    real_apply = Store.apply
    refused: list[int] = []

    def apply(self: Store, writes: Sequence[Write]) -> Any:
        if len(refused) < 2 and any(w.to is S.QUEUED for w in writes):  # twice: a full disk
            refused.append(len(writes))
            raise StoreError(f"store {self.name}: database or disk is full")
        return real_apply(self, writes)

    monkeypatch.setattr(Store, "apply", apply)
    with Emulator(EmulatorConfig(speed=500.0, workers=4)) as emu:
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            overrides=Overrides(poll_interval=0.02, max_cost=10.0),
        )
        ledger = emu.ledger()
    assert report.complete, report
    # All three claims of the first batch, their attempts and reservations, were committed
    # before the first POST left.
    ((submitting, open_, reserved, flight),) = at_first_post
    assert (submitting, open_, flight) == (3, 3, 3)
    assert reserved > 0
    assert len(refused) == 2
    assert len(ledger["jobs"]) == 4  # each paid once, whatever the store refused
    assert set(ledger["submissions_by_input"].values()) == {1}
    assert report.spent_usd <= 10.0
