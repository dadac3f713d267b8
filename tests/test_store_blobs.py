"""Large data: URIs stored once in the blobs table and given back byte for byte; sources kept.

The backend-neutral tests take the ``target`` fixture; tests/test_store_postgres.py runs them again
on PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.canonical import canonical_json, job_key
from orchestrator.errors import StoreError
from orchestrator.models import get_model
from orchestrator.results import ResultsFolder
from orchestrator.store import JobRow, JobState, Store
from orchestrator.store.blobs import BLOB_MIN, BlobCache, Splitter
from orchestrator.store.store import BLOB_WINDOW, PAGE
from tests.test_store import MODEL, FakeJob

S = JobState


@pytest.fixture
def target(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    with Store.open(target) as s:
        yield s


def data_uri(seed: int, size: int = 48 * 1024) -> str:
    payload = hashlib.shake_256(str(seed).encode()).digest(size)
    return "data:image/png;base64," + base64.b64encode(payload).decode("ascii")


def real_job(index: int, inputs: dict[str, Any], **sources: str) -> FakeJob:
    """A job whose key is the real job key of its inputs, as the grid makes it."""
    return FakeJob(job_key(MODEL, inputs), index, inputs=inputs, sources=sources)


def engine_for(target: str) -> sa.Engine:
    return sa.create_engine(target if "://" in target else f"sqlite:///{target}")


def table(target: str, query: str) -> list[tuple[Any, ...]]:
    engine = engine_for(target)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(query)]
    finally:
        engine.dispose()


def assert_exact(row: JobRow | None, job: FakeJob) -> None:
    """The row's inputs are the POST body the job was made of, to the byte, key included."""
    assert row is not None
    assert canonical_json(row.inputs).encode() == canonical_json(job.inputs).encode()
    assert job_key(row.model_id, row.inputs, row.repeat) == row.key == job.key


def test_data_uris_are_stored_once_and_every_read_gives_them_back(
    store: Store, target: str
) -> None:
    image, other = data_uri(1), data_uri(2)
    short = "data:image/png;base64," + "A" * (BLOB_MIN - 40)  # small: stays inline
    jobs = [
        real_job(0, {"image": image, "56_text": "a fox"}),
        real_job(1, {"image": image, "56_text": "a cat"}),
        real_job(2, {"image": other, "video": image, "56_text": "a cat"}),
        real_job(3, {"image": short, "56_text": "x" * 5000}),  # long, but not a data: URI
    ]
    store.sync_jobs(jobs, MODEL)
    sizes = table(target, "SELECT sha256, size FROM blobs ORDER BY size")
    assert sorted(sizes) == sorted(
        (hashlib.sha256(u.encode()).hexdigest(), len(u)) for u in (image, other)
    )
    stored = table(target, "SELECT inputs FROM jobs")
    assert max(len(text) for (text,) in stored) < 7000  # no URI inline but the short one
    assert sum(image in text for (text,) in stored) == 0
    by_key = {job.key: job for job in jobs}
    for row in store.jobs():
        assert_exact(row, by_key[row.key])
    for job in jobs:
        assert_exact(store.get(job.key), job)
    for row in store.claim(4):
        assert_exact(row, by_key[row.key])
        assert_exact(store.transition(row.key, S.QUEUED, request_id="r"), by_key[row.key])
    # A second store reads them with a cold cache.
    with Store.open(target, readonly=True) as reader:
        for job in jobs:
            assert_exact(reader.get(job.key), job)


def test_an_input_equal_to_a_reference_is_not_taken_for_one(store: Store) -> None:
    image = data_uri(3)
    sha = hashlib.sha256(image.encode()).hexdigest()
    jobs = [
        real_job(0, {"image": image, "56_text": sha}),
        real_job(1, {"image": sha, "56_text": {"$blob": sha}}),
    ]
    store.sync_jobs(jobs, MODEL)
    for job in jobs:
        assert_exact(store.get(job.key), job)


def test_a_spec_synced_again_shares_the_blobs_it_has(store: Store, target: str) -> None:
    image = data_uri(4)
    store.sync_jobs([real_job(i, {"image": image, "56_text": f"t{i}"}) for i in range(3)], MODEL)
    # Another string object with the same text, in a later sync: same blob, not a new one.
    copy = "".join(list(image))
    assert copy is not image
    more = [real_job(i, {"image": copy, "56_text": f"t{i}"}) for i in range(6)]
    assert store.sync_jobs(more, MODEL).new == 3
    assert table(target, "SELECT count(*) FROM blobs") == [(1,)]
    for job in more:
        assert_exact(store.get(job.key), job)


def test_streaming_reads_each_blob_once_and_a_few_at_a_time(store: Store, target: str) -> None:
    shared = data_uri(5)
    n = PAGE * 2 + 9
    jobs = [real_job(i, {"image": shared, "56_text": f"take {i}"}) for i in range(n)]
    own = [real_job(n + i, {"image": data_uri(100 + i, 2048)}) for i in range(3 * BLOB_WINDOW)]
    store.sync_jobs([*jobs, *own], MODEL)
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if "FROM blobs" in statement:
            reads.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", count)
    try:
        with Store.open(target) as cold:
            rows = list(cold.jobs())
            assert len(reads) == 1 + 3  # the shared image once; the others BLOB_WINDOW at a time
            again = list(cold.jobs())
            assert len(reads) == 4  # all in the store's cache now
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", count)
    for row, job in zip(rows, [*jobs, *own], strict=True):
        assert_exact(row, job)
    assert rows == again


def test_sources_round_trip_and_follow_the_spec(store: Store) -> None:
    image = data_uri(6)
    named = real_job(0, {"image": image, "56_text": "a"}, image="shots/fox.png")
    bare = real_job(1, {"56_text": "b"})
    store.sync_jobs([named, bare], MODEL)
    row = store.get(named.key)
    assert row is not None
    assert row.sources == {"image": "shots/fox.png"}
    assert [r.sources for r in store.jobs()] == [{"image": "shots/fox.png"}, {}]
    assert store.claim(1)[0].sources == {"image": "shots/fox.png"}
    # The image renamed in the spec: same content, same key, the new name for its outputs.
    renamed = real_job(0, {"image": image, "56_text": "a"}, image="shots/vixen.png")
    assert store.sync_jobs([renamed, bare], MODEL).new == 0
    row = store.transition(named.key, S.QUEUED, request_id="r")
    assert (row.sources, row.state) == ({"image": "shots/vixen.png"}, S.QUEUED)


def test_a_missing_blob_is_a_one_line_error(store: Store, target: str) -> None:
    job = real_job(0, {"image": data_uri(7)})
    store.sync_jobs([job], MODEL)
    engine = engine_for(target)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM blobs")
    engine.dispose()
    with Store.open(target) as cold, pytest.raises(StoreError, match=r"input blob \w+ is missing"):
        cold.get(job.key)


def test_the_splitter_hashes_one_string_object_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes = b"") -> Any:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    image, other = data_uri(8), data_uri(9)
    split = Splitter(budget=len(image) + 1)  # room for one string: the other evicts it
    for _ in range(100):
        stored, refs = split.split({"image": image, "56_text": "t"})
    assert len(calls) == 1
    assert stored == {"image": refs["image"], "56_text": "t"}
    assert [r["data"] for r in split.take()] == [image]
    split.split({"image": other})
    split.split({"image": image})  # evicted by `other`: hashed again, but not written again
    assert len(calls) == 3
    assert [r["data"] for r in split.take()] == [other]


def test_the_cache_is_bounded_by_size() -> None:
    cache = BlobCache(budget=100)
    cache.put("a", "x" * 60)
    cache.put("b", "y" * 30)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", "z" * 30)  # over budget: b goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("x" * 60, None, "z" * 30)
    cache.put("big", "w" * 101)  # bigger than the whole budget: never cached
    assert cache.get("big") is None


SYNC_10K = """
import base64, json, os, resource, sys
from dataclasses import dataclass, field
from orchestrator.store import Store

@dataclass
class Job:
    key: str
    index: int
    inputs: dict
    model_id: str = "community/wan-2-2/vace-fun"
    repeat: int = 0
    sources: dict = field(default_factory=dict)

uri = "data:image/png;base64," + base64.b64encode(os.urandom(6 * 2**20)).decode("ascii")
with Store.open(sys.argv[1]) as store:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    jobs = (
        Job(f"{i:064x}", i, {"image": uri, "56_text": f"take {i}"}, sources={"image": "a.png"})
        for i in range(10_000)
    )
    store.sync_jobs(jobs, "community/wan-2-2/vace-fun")
    synced = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    streamed = sum(row.inputs["image"] is not None for row in store.jobs())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"uri": len(uri), "sync_kib": synced - before, "read_kib": after - synced,
                  "rows": streamed}))
"""


def test_ten_thousand_jobs_over_one_6_mib_image_stay_small(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    out = subprocess.run(
        [sys.executable, "-c", SYNC_10K, str(path)], check=True, capture_output=True, text=True
    )
    figures = json.loads(out.stdout)
    assert figures["rows"] == 10_000
    size = sum(p.stat().st_size for p in tmp_path.glob("store.db*"))
    assert size < figures["uri"] + 8 * 2**20  # the image once, plus a few MiB of rows
    # Flat memory: the URI is copied a few times (hash, database), never once per job.
    assert figures["sync_kib"] < 64 * 1024
    assert figures["read_kib"] < 64 * 1024


def test_a_resumed_job_names_its_output_after_its_image_file(store: Store) -> None:
    inputs = {"118_image": data_uri(10), "56_text": "a fox"}
    job = real_job(0, inputs, **{"118_image": "shots/fox.png"})
    store.sync_jobs([job], MODEL)
    row = store.get(job.key)
    assert row is not None
    folder = ResultsFolder(Path("results"), get_model(MODEL), "{image}_{index}")
    assert folder.output_name(row, 0, 1, "https://cdn.runcomfy.net/o/1.mp4") == "fox_0.mp4"
