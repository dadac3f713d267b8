"""The budget ledger in the store: reservations at claim, what each transition books, attempts.

Backend-neutral (the ``target`` fixture); tests/test_ledger_postgres.py runs them on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from orchestrator.store import JobState, Store
from tests.test_migrations import _config
from tests.test_store import MODEL, FakeJob

S = JobState
PRICES = {"a": 0.25, "b": 0.50, "c": 0.75, "d": 0.25}


def priced_jobs() -> Iterator[FakeJob]:
    for i, (name, usd) in enumerate(PRICES.items()):
        yield FakeJob(f"job-{name}", i, inputs={"56_text": name, "usd": usd})


def estimate(inputs: Mapping[str, Any]) -> float | None:
    usd = inputs.get("usd")
    return float(usd) if isinstance(usd, float) else None


@pytest.fixture
def target(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    with Store.open(target) as s:
        s.sync_jobs(priced_jobs(), MODEL)
        yield s


def books(store: Store) -> tuple[float, float, int]:
    ledger = store.ledger()
    return round(ledger.spent_usd, 6), round(ledger.reserved_usd, 6), ledger.in_flight


def test_a_claim_reserves_each_jobs_own_estimate_and_refuses_what_does_not_fit(
    store: Store,
) -> None:
    first = store.claim_within(estimate, cap=1.0)
    second = store.claim_within(estimate, cap=1.0)
    assert (first.row and first.row.key, second.row and second.row.key) == ("job-a", "job-b")
    assert books(store) == (0.0, 0.75, 2)
    refused = store.claim_within(estimate, cap=1.0)  # job-c ($0.75) would make $1.50
    assert (refused.row, refused.refused, refused.estimate) == (None, "budget", 0.75)
    assert store.get("job-c").state is S.PENDING  # type: ignore[union-attr]
    assert books(store) == (0.0, 0.75, 2)  # nothing written
    assert [(a.job_key, a.estimate_usd) for a in store.attempts()] == [
        ("job-a", 0.25),
        ("job-b", 0.5),
    ]


def test_an_exact_fit_is_taken_despite_float_rounding(store: Store) -> None:
    cap = 0.25 + 0.5 + 0.75  # 1.5 in floats, summed in another order by the ledger
    taken = [store.claim_within(estimate, cap=cap).row for _ in range(3)]
    assert all(taken)


def test_with_a_cap_and_no_estimate_nothing_is_claimed(store: Store) -> None:
    refused = store.claim_within(lambda _: None, cap=5.0)
    assert (refused.row, refused.refused) == (None, "price")
    assert books(store) == (0.0, 0.0, 0)
    # Without a cap an unknown price reserves nothing and the job goes.
    assert store.claim_within(lambda _: None, cap=None).row is not None
    assert books(store) == (0.0, 0.0, 1)


def test_released_when_never_sent_or_refused_settled_at_the_cost_or_the_estimate(
    store: Store,
) -> None:
    keys = [store.claim_within(estimate, cap=None).row.key for _ in range(4)]  # type: ignore[union-attr]
    store.transition(keys[0], S.PENDING, detail="never sent")
    store.transition(keys[1], S.FAILED, error="refused")
    assert books(store) == (0.0, 1.0, 2)
    store.transition(keys[2], S.QUEUED, request_id="r-c")
    store.transition(keys[2], S.SUCCEEDED, cost=0.70)
    assert books(store) == (0.70, 0.25, 1)
    store.transition(keys[3], S.QUEUED, request_id="r-d")
    store.transition(keys[3], S.FAILED, cost=None)  # no valid cost: the estimate is kept
    assert books(store) == (0.95, 0.0, 0)
    closed = {a.job_key: (a.charge_usd, a.cost_usd) for a in store.attempts()}
    assert closed == {
        "job-a": (0.0, None),
        "job-b": (0.0, None),
        "job-c": (0.70, 0.70),
        "job-d": (0.25, None),
    }
    assert store.spent() == pytest.approx(0.95)


@pytest.mark.parametrize("bad", [None, -0.25, math.nan, math.inf])
def test_an_invalid_cost_keeps_the_estimate(store: Store, bad: float | None) -> None:
    row = store.claim_within(estimate, cap=None).row
    assert row is not None
    store.transition(row.key, S.QUEUED, request_id="r")
    store.transition(row.key, S.SUCCEEDED, cost=bad)
    assert books(store) == (0.25, 0.0, 0)


def test_unknown_and_lost_stay_reserved_and_a_retry_charges_the_estimate(store: Store) -> None:
    a = store.claim_within(estimate, cap=None).row
    b = store.claim_within(estimate, cap=None).row
    assert a is not None
    assert b is not None
    store.transition(a.key, S.UNKNOWN, detail="answer lost")
    store.transition(b.key, S.QUEUED, request_id="r-b")
    store.transition(b.key, S.LOST, detail="forgotten")
    assert books(store) == (0.0, 0.75, 0)  # may have been billed: still counted
    assert store.claim_within(estimate, cap=1.0).refused == "budget"  # $0.75 + $0.75
    store.transition(a.key, S.PENDING, detail="retry requested")
    store.transition(b.key, S.PENDING, detail="retry requested")
    assert books(store) == (0.75, 0.0, 0)


def test_every_attempt_is_kept_and_spend_is_their_sum(store: Store) -> None:
    for cost in (0.2, 0.3, 0.4):
        row = store.claim_within(lambda _: 0.25, cap=None).row
        assert row is not None
        assert row.key == "job-a"
        store.transition(row.key, S.QUEUED, request_id=f"r{cost}")
        store.transition(row.key, S.FAILED if cost < 0.4 else S.SUCCEEDED, cost=cost)
        if cost < 0.4:
            store.transition(row.key, S.PENDING, detail="retry requested")
    attempts = store.attempts("job-a")
    assert [(a.attempt, a.charge_usd, a.request_id) for a in attempts] == [
        (1, 0.2, "r0.2"),
        (2, 0.3, "r0.3"),
        (3, 0.4, "r0.4"),
    ]
    assert store.spent() == pytest.approx(0.9)  # the job row keeps only the last cost
    assert store.get("job-a").cost == pytest.approx(0.4)  # type: ignore[union-attr]


def test_reservations_survive_closing_the_store(target: str, store: Store) -> None:
    row = store.claim_within(estimate, cap=None).row
    assert row is not None
    store.transition(row.key, S.QUEUED, request_id="r")
    store.close()
    with Store.open(target) as again:
        assert books(again) == (0.0, 0.25, 1)
        again.transition(row.key, S.SUCCEEDED, cost=0.25)
        assert books(again) == (0.25, 0.0, 0)


def test_the_budget_settings_are_recorded_for_readers(target: str, store: Store) -> None:
    store.set_budget(12.5, 4)
    with Store.open(target, readonly=True) as reader:
        ledger = reader.ledger()
    assert (ledger.cap_usd, ledger.concurrency) == (12.5, 4)


def test_the_shared_concurrency_refuses_a_claim_as_busy(store: Store) -> None:
    assert store.claim_within(estimate, cap=None, concurrency=2).row is not None
    assert store.claim_within(estimate, cap=None, concurrency=2).row is not None
    busy = store.claim_within(estimate, cap=None, concurrency=2)
    assert (busy.row, busy.refused) == (None, "busy")


def test_a_store_from_before_the_ledger_is_backfilled_from_its_costs(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0004")
    engine.dispose()
    rows = [("done", 1, 0.25), ("failed", 2, 0.5), ("queued", 1, None), ("pending", 0, None)]
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        for index, (state, attempts, cost) in enumerate(rows):
            raw.execute(
                'INSERT INTO jobs (key, "index", model_id, inputs, repeat, state, attempts,'
                " outputs, in_spec, created_at, updated_at, cost) VALUES (?, ?, ?, '{}', 0, ?, ?,"
                " '[]', 1, '2026-11-01 10:00:00', '2026-11-01 10:00:00', ?)",
                (state, index, MODEL, state, attempts, cost),
            )
    with Store.open(path) as store:
        assert books(store) == (0.75, 0.0, 1)
        assert sorted((a.job_key, a.closed_at is None) for a in store.attempts()) == [
            ("done", False),
            ("failed", False),
            ("queued", True),
        ]
        store.transition("queued", S.SUCCEEDED, cost=0.3)
        assert books(store) == (1.05, 0.0, 0)


def test_booking_a_transition_finds_rows_by_index_at_any_size(tmp_path: Path) -> None:
    from tests.test_sync import query_plans

    with Store.open(tmp_path / "store.db") as store:
        store.sync_jobs(priced_jobs(), MODEL)
        row = store.claim_within(estimate, cap=None).row
        assert row is not None
        plans = query_plans(store, lambda: store.transition(row.key, S.QUEUED, request_id="r"))
        plans += query_plans(store, lambda: store.transition(row.key, S.SUCCEEDED, cost=0.2))
        assert any("attempts USING INDEX" in plan for plan in plans), plans
        assert all("SCAN" not in plan for plan in plans), plans
