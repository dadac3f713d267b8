"""The job store on PostgreSQL: the backend-neutral tests of test_store.py again, plus what only a
shared server does (several runners, SKIP LOCKED). Runs when COMFYSWEEP_TEST_POSTGRES_URL is set
(.ci/run starts a server); each test gets a schema of its own."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from orchestrator.canonical import job_key
from orchestrator.errors import StoreError
from orchestrator.store import JobState, Store
from orchestrator.store.schema import head_revision
from tests.test_migrations import schema_diffs, store_at_0001
from tests.test_store import (  # noqa: F401  (collected again here, against PostgreSQL)
    MODEL,
    FakeJob,
    make_jobs,
    test_claim_takes_pending_spec_jobs_in_index_order,
    test_counts_name_every_state,
    test_expect_narrows_the_allowed_sources,
    test_fields_and_timestamps_follow_the_target_state,
    test_illegal_transition_is_refused_and_changes_nothing,
    test_jobs_stream_in_index_order_and_allow_writes_between_pages,
    test_legal_transition_moves_and_appends_an_event,
    test_lock_records_the_run_on_what_it_touches,
    test_meta_holds_json_values,
    test_readonly_store_refuses_writes_and_closed_store_refuses_all,
    test_retry_starts_a_fresh_attempt_and_keeps_the_story,
    test_spent_sums_the_recorded_costs,
    test_sync_counts_new_jobs_renumbers_and_marks_the_spec,
    test_sync_rejects_a_job_of_another_model,
    test_sync_streams_without_holding_the_jobs,
    test_sync_takes_several_models_and_counts_each,
    test_transition_of_an_unknown_job_says_so,
    test_unknown_field_is_a_bug_in_the_caller,
    test_update_sets_fields_without_an_event,
)
from tests.test_store_blobs import (  # noqa: F401  (collected again here, against PostgreSQL)
    assert_exact,
    data_uri,
    test_a_missing_blob_is_a_one_line_error,
    test_a_spec_synced_again_shares_the_blobs_it_has,
    test_an_input_equal_to_a_reference_is_not_taken_for_one,
    test_data_uris_are_stored_once_and_every_read_gives_them_back,
    test_sources_round_trip_and_follow_the_spec,
    test_streaming_reads_each_blob_once_and_a_few_at_a_time,
)

pytestmark = pytest.mark.postgres
SERVER = os.environ.get("COMFYSWEEP_TEST_POSTGRES_URL")


@pytest.fixture
def admin() -> Iterator[sa.Engine]:
    if not SERVER:
        pytest.skip("COMFYSWEEP_TEST_POSTGRES_URL is not set")
    engine = sa.create_engine(SERVER)
    yield engine
    engine.dispose()


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    with Store.open(target) as s:
        yield s


@pytest.fixture
def target(admin: sa.Engine) -> Iterator[str]:
    """A store URL whose tables live in a fresh schema (search_path), dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    assert SERVER is not None
    yield f"{SERVER}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_migrated_schema_equals_the_declared_tables(target: str) -> None:
    Store.open(target).close()
    assert schema_diffs(target) == []


def test_concurrent_opens_migrate_once(target: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            Store.open(target).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert schema_diffs(target) == []


def test_a_store_from_a_newer_comfysweep_is_refused(target: str) -> None:
    Store.open(target).close()
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(StoreError, match="written by a newer comfysweep"):
        Store.open(target)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    assert version == "9999_from_the_future"
    assert head_revision() != version


def test_claim_skips_rows_another_runner_has_locked(store: Store, target: str) -> None:
    store.sync_jobs(make_jobs(6), MODEL)
    engine = sa.create_engine(target)
    with engine.connect() as other:
        other.exec_driver_sql(
            "SELECT key FROM jobs WHERE key IN ('job-000000', 'job-000001') FOR UPDATE"
        ).all()
        # Does not wait for the other transaction: takes the next free jobs.
        assert [r.key for r in store.claim(3)] == ["job-000002", "job-000003", "job-000004"]
        other.rollback()
    engine.dispose()
    assert [r.key for r in store.claim(3)] == ["job-000000", "job-000001", "job-000005"]


def test_several_runners_share_a_store_and_never_share_a_job(target: str) -> None:
    with Store.open(target) as s:
        s.sync_jobs(make_jobs(300), MODEL)
    taken: list[list[str]] = [[], [], []]
    errors: list[BaseException] = []

    def runner(n: int) -> None:
        try:
            with Store.open(target) as mine, mine.lock(f"runner {n}"):  # shared on PostgreSQL
                while batch := mine.claim(8):
                    taken[n].extend(r.key for r in batch)
                    for row in batch:
                        mine.transition(row.key, JobState.QUEUED, request_id=f"r-{row.key}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    everything = [k for keys in taken for k in keys]
    assert sorted(everything) == [f"job-{i:06d}" for i in range(300)]
    with Store.open(target, readonly=True) as reader:
        assert reader.counts()["queued"] == 300


def test_an_0001_store_with_inline_images_upgrades_and_reads_back(target: str) -> None:
    image = data_uri(1)
    old = [{"image": image, "56_text": f"take {i}"} for i in range(3)]
    store_at_0001(target, old)
    jobs = [FakeJob(job_key(MODEL, v), i, inputs=v) for i, v in enumerate(old)]
    with Store.open(target) as store:
        for job in jobs:
            assert_exact(store.get(job.key), job)
        more = FakeJob(job_key(MODEL, {"image": image}), 3, inputs={"image": image})
        assert store.sync_jobs([*jobs, more], MODEL).new == 1
        for row, job in zip(store.jobs(), [*jobs, more], strict=True):
            assert_exact(row, job)
    assert schema_diffs(target) == []


def test_resume_adopts_only_the_jobs_of_runs_that_died(target: str) -> None:
    """A second runner must not take over jobs a live runner is still submitting or polling."""
    with Store.open(target) as first, Store.open(target) as second:
        first.sync_jobs(make_jobs(4), MODEL)
        with first.lock("first runner"):
            claimed = first.claim(2)
            first.transition(claimed[0].key, JobState.QUEUED, request_id="r-1")
            with second.lock("second runner"):
                # The first runner is alive: nothing of its is an orphan.
                assert list(second.adopt([JobState.SUBMITTING, JobState.QUEUED])) == []
                # The first runner's session dies (SIGKILL, lost connection): its jobs are free,
                # and each goes to exactly one adopter.
                first.close()
                adopted = list(second.adopt([JobState.SUBMITTING, JobState.QUEUED]))
                assert sorted(r.key for r in adopted) == sorted(r.key for r in claimed)
                assert {r.run_id for r in adopted} == {second.run_id}
            with Store.open(target) as third, third.lock("third runner"):
                # The second run ended cleanly (lock released), so its jobs are orphans now.
                assert len(list(third.adopt([JobState.SUBMITTING, JobState.QUEUED]))) == 2


def test_sync_finds_the_jobs_that_left_the_spec_by_an_anti_join(target: str) -> None:
    """NOT IN (SELECT ...) over keys that outgrow work_mem is a subplan rescanned for every job:
    quadratic, minutes at 100,000 jobs. The orphan UPDATE must plan as an anti-join."""
    plans: list[str] = []

    def explain(
        conn: sa.Connection, cursor: object, statement: str, params: object, *_: object
    ) -> None:
        if statement.startswith("UPDATE jobs SET in_spec"):
            raw = conn.connection.dbapi_connection
            assert raw is not None
            with raw.cursor() as cur:
                cur.execute(f"EXPLAIN {statement}", params)
                plans.append("\n".join(row[0] for row in cur.fetchall()))

    small = f"{target}%20-cwork_mem%3D64kB"  # 2,000 keys outgrow it, as 100,000 outgrow 4 MB
    with Store.open(small) as store:
        store.sync_jobs(make_jobs(2000), MODEL)
        sa.event.listen(store._engine, "before_cursor_execute", explain)
        assert store.sync_jobs(make_jobs(1500), MODEL).total == 1500
        assert store.counts(in_spec=False)["pending"] == 500
    (plan,) = plans
    assert "Anti Join" in plan, plan
    assert "SubPlan" not in plan, plan


def test_a_budgeted_claim_is_two_statements_its_reservation_and_move_in_one(target: str) -> None:
    """Each statement is a round trip to the server while the ledger row is locked: the pick,
    then the reservation, the move to submitting, the event and the attempt in one statement."""
    sent: list[str] = []
    with Store.open(target) as store:
        store.sync_jobs(make_jobs(3), MODEL)
        sa.event.listen(store._engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
        claim = store.claim_within(lambda _: 0.25, cap=0.6, concurrency=5)
        assert claim.row is not None
        assert claim.row.key == "job-000000"
        assert claim.row.state is JobState.SUBMITTING
        assert len(sent) == 2, sent
        assert (claim.ledger.reserved_usd, claim.ledger.in_flight) == (0.25, 1)
        assert store.claim_within(lambda _: 0.25, cap=0.6).row is not None
        refused = store.claim_within(lambda _: 0.25, cap=0.6)  # $0.75 would pass the cap
        assert (refused.row, refused.refused) == (None, "budget")
        (attempt, _) = store.attempts()
        assert (attempt.job_key, attempt.attempt, attempt.estimate_usd) == ("job-000000", 1, 0.25)
        (event,) = [e for e in store.events("job-000000") if e.detail == "claimed"]
        assert (event.from_state, event.to_state) == (JobState.PENDING, JobState.SUBMITTING)
        assert store.ledger().reserved_usd == 0.5
        assert store.counts()["pending"] == 1
