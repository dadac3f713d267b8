"""Store costs on this machine: per-transition commits, claims, a 100k sync, resuming 10k jobs,
and a 10k-job sync over one 6 MiB image (a data: URI in every job's input).

    python benchmarks/store_ops.py [--postgres URL] [--image-jobs N]

SQLite figures use a file in a temporary folder (the disk the results folder would be on).
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from benchkit import MODEL, Job, jobs

from orchestrator.store import FINAL, JobState, Store

S = JobState


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_job(target: str, n: int) -> None:
    """Median cost of one committed transition (NORMAL vs FULL on SQLite), and of a claim of 8."""
    with Store.open(target) as store:
        store.sync_jobs(jobs(n), MODEL)
        claims = [timed(lambda: store.claim(8)) for _ in range(n // 8)]
        keys = [row.key for row in store.jobs([S.SUBMITTING])]
        durable = [timed(partial(store.transition, k, S.QUEUED, request_id="r")) for k in keys]
        normal = [timed(partial(store.transition, k, S.RUNNING)) for k in keys]
        update = [timed(partial(store.update, k, cost=0.1)) for k in keys]
    print(f"  transition, synchronous=NORMAL (queued -> running) {median_us(normal):8.0f} us")
    print(f"  transition, synchronous=FULL (submitting -> queued) {median_us(durable):7.0f} us")
    print(f"  update (no event)                                   {median_us(update):7.0f} us")
    print(f"  claim(8), FULL                                      {median_us(claims):7.0f} us")


def sync_child(target: str, n: int) -> None:
    """Run in a fresh process, so ru_maxrss is the sync's peak and nothing else's."""
    with Store.open(target) as store:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        result = store.sync_jobs(jobs(n), MODEL)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = store.sync_jobs(jobs(n), MODEL)
        second = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (result.new, again.new) == (n, 0)
    print(f"  sync_jobs {n:,} new jobs   {first:6.2f} s")
    print(f"  sync_jobs {n:,} again      {second:6.2f} s (re-running the same spec)")
    print(f"  peak RSS {peak / 1024:.0f} MiB ({(peak - base) / 1024:+.0f} MiB over the open store)")


def image_jobs(n: int) -> Iterator[Job]:
    """n jobs over one 6 MiB image: one URI string object shared by all, as the grid does."""
    uri = "data:image/png;base64," + base64.b64encode(os.urandom(6 * 2**20)).decode("ascii")
    for i in range(n):
        inputs = {"image": uri, "56_text": f"a fox, take {i}"}
        yield Job(f"{i:064x}", i, inputs=inputs, sources={"image": "fox.png"})


def image_child(target: str, n: int) -> None:
    """Sync n jobs over one 6 MiB image (fresh process, for ru_maxrss), then read them back."""
    with Store.open(target) as store:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        store.sync_jobs(image_jobs(n), MODEL)
        took = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        count = sum(1 for _ in store.jobs())
        streamed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in Path(target).parent.glob(Path(target).name + "*"))
    assert count == n
    print(f"  sync_jobs {n:,} jobs over one 6 MiB image   {took:6.2f} s")
    print(f"  store file (+ WAL)                       {size / 2**20:6.1f} MiB")
    print(f"  peak RSS {peak / 1024:.0f} MiB ({(peak - base) / 1024:+.0f} MiB over the open store)")
    print(f"  stream them back                         {streamed:6.2f} s")


def resume(target: str, n: int) -> None:
    """Open + count a store of n jobs, then stream its non-final jobs (what a resume does)."""
    with Store.open(target) as store:
        store.sync_jobs(jobs(n), MODEL)
        # The mix of a night's run: 60% done, some failed, some in flight, the rest pending.
        for i, row in enumerate(store.claim(n * 9 // 10)):
            store.transition(row.key, S.QUEUED, request_id=f"r{i}")
            if i % 9 < 6:
                store.transition(row.key, S.SUCCEEDED)
                store.transition(row.key, S.DONE)
            elif i % 9 == 6:
                store.transition(row.key, S.RUNNING)
            elif i % 9 == 7:
                store.transition(row.key, S.FAILED, error="boom")
    active = [s for s in JobState if s not in FINAL]
    opened: list[float] = []
    streamed: list[float] = []
    count = 0
    for _ in range(5):
        start = time.perf_counter()
        store = Store.open(target)
        total = sum(store.counts().values())
        opened.append(time.perf_counter() - start)
        start = time.perf_counter()
        count = sum(1 for _ in store.jobs(active))
        streamed.append(time.perf_counter() - start)
        store.close()
    assert total == n
    print(f"  open + counts() of {n:,} jobs        {statistics.median(opened) * 1e3:6.1f} ms")
    print(f"  stream its {count:,} non-final jobs   {statistics.median(streamed) * 1e3:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="also measure a postgresql+psycopg:// URL (empty db)")
    parser.add_argument("--image-jobs", type=int, default=10_000, help="jobs over one 6 MiB image")
    parser.add_argument("--sync-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--image-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_child:
        sync_child(args.sync_child[0], int(args.sync_child[1]))
        return
    if args.image_child:
        image_child(args.image_child[0], int(args.image_child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite (WAL)")
        per_job(str(Path(tmp, "per_job.db")), 4000)
        script = [sys.executable, __file__, "--sync-child", str(Path(tmp, "sync.db")), "100000"]
        subprocess.run(script, check=True)
        resume(str(Path(tmp, "resume.db")), 10_000)
        image = [sys.executable, __file__, "--image-child", str(Path(tmp, "image.db"))]
        subprocess.run([*image, str(args.image_jobs)], check=True)
    if args.postgres:
        print("PostgreSQL")
        admin = sa.create_engine(args.postgres)
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            per_job(f"{args.postgres}?options=-csearch_path%3D{schema}", 2000)
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()


if __name__ == "__main__":
    main()
