"""The runner's store path per job: one transaction per write vs batched claims and group commit.

    python benchmarks/store_path.py [--jobs 2000] [--concurrency 64] [--rounds 3]

Every job takes the writes a run makes (claim, queued with its request id, running, succeeded with
its result, the outputs as they land, done) against a real SQLite store in a temporary folder, with
no HTTP: what the store costs the runner, measured in one process. Sides, alternated each round:

- ``serial``: as before issue 12: claim_within() one job at a time, then each job's writes in
  their own transaction (Store.transition/update), as asyncio tasks calling them inline;
- ``batched``: claim_batch() of the free slots in one transaction, each job's writes through the
  runner's GroupCommit (inline on the loop);
- ``threaded``: the same, each batch's transaction in a worker thread (one hop per batch).

Wall time and CPU (process time, every thread) per job, and transactions per job; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import benchkit

from orchestrator.store import JobState, Store
from orchestrator.store.batch import GroupCommit, Write

S = JobState
SIDES = ("serial", "batched", "threaded")
RESULT = {"urls": ["https://example.com/out.mp4"], "raw": {"status": "succeeded"}}


def estimate(_inputs: Any) -> float:
    return 0.25


async def _job_serial(store: Store, key: str, n: int) -> None:
    await asyncio.sleep(0)  # the POST
    store.transition(key, S.QUEUED, request_id=f"req-{n}")
    await asyncio.sleep(0)  # a poll
    store.transition(key, S.RUNNING)
    await asyncio.sleep(0)
    store.transition(key, S.SUCCEEDED, cost=0.25, result=RESULT)
    await asyncio.sleep(0)  # the download
    store.update(key, outputs=[{"url": "u", "path": "p"}])
    store.transition(key, S.DONE, outputs=[{"url": "u", "path": "p", "size": 1}], error=None)


async def _job_grouped(writes: GroupCommit, key: str, n: int) -> None:
    await asyncio.sleep(0)
    await writes.write(Write(key, S.QUEUED, {"request_id": f"req-{n}"}))
    await asyncio.sleep(0)
    await writes.write(Write(key, S.RUNNING))
    await asyncio.sleep(0)
    await writes.write(Write(key, S.SUCCEEDED, {"cost": 0.25, "result": RESULT}))
    await asyncio.sleep(0)
    await writes.write(Write(key, None, {"outputs": [{"url": "u", "path": "p"}]}))
    outputs = [{"url": "u", "path": "p", "size": 1}]
    await writes.write(Write(key, S.DONE, {"outputs": outputs, "error": None}))


class Threaded(GroupCommit):
    """The group commit with each batch's transaction in a worker thread (one hop per batch)."""

    async def _commit(self, batch: Any) -> None:
        await anyio.to_thread.run_sync(self._apply, batch)


async def _drive(side: str, store: Store, jobs: int, conc: int) -> None:
    writes = Threaded(store) if side == "threaded" else GroupCommit(store)
    active = 0
    freed = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def one(key: str, n: int) -> None:
        nonlocal active
        try:
            if side == "serial":
                await _job_serial(store, key, n)
            else:
                await _job_grouped(writes, key, n)
        finally:
            active -= 1
            freed.set()

    started = 0
    while started < jobs:
        while active >= conc:
            freed.clear()
            await freed.wait()
        if side == "serial":
            claim = store.claim_within(estimate, cap=None)
            rows = [] if claim.row is None else [claim.row]
        elif side == "threaded":
            limit = conc - active
            rows = (
                await asyncio.to_thread(store.claim_batch, estimate, cap=None, limit=limit)
            ).rows
        else:
            rows = store.claim_batch(estimate, cap=None, limit=conc - active).rows
        for row in rows:
            active += 1
            tasks.append(asyncio.create_task(one(row.key, started)))
            started += 1
    await asyncio.gather(*tasks)


def one_round(side: str, jobs: int, conc: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="comfysweep-storepath-") as tmp:
        with Store.open(Path(tmp) / "store.db") as store, store.lock("bench"):
            store.sync_jobs(benchkit.jobs(jobs), benchkit.MODEL)
            commits = _count_commits(store)
            wall, cpu = time.perf_counter(), time.process_time()
            asyncio.run(_drive(side, store, jobs, conc))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            done = store.counts()["done"]
        if done != jobs:
            raise SystemExit(f"{side}: {done} of {jobs} jobs done")
    return {"wall_s": wall, "cpu_s": cpu, "tx": commits()}


def _count_commits(store: Store) -> Any:
    """Counts the store's transactions from here on (wraps its _tx)."""
    real = store._tx
    seen = [0]

    def counted(**kwargs: Any) -> Any:
        seen[0] += 1
        return real(**kwargs)

    store._tx = counted  # type: ignore[method-assign]
    return lambda: seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES))
    args = parser.parse_args()
    sides = args.sides.split(",")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for n in range(args.rounds):
        for side in sides:
            got = one_round(side, args.jobs, args.concurrency)
            runs[side].append(got)
            wall, cpu = got["wall_s"] / args.jobs * 1000, got["cpu_s"] / args.jobs * 1000
            print(
                f"round {n + 1} {side:<9} {wall:6.3f} ms/job wall {cpu:6.3f} ms/job CPU "
                f"{got['tx'] / args.jobs:5.2f} tx/job"
            )

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side]) / args.jobs

    print(f"{args.jobs} jobs at concurrency {args.concurrency}, median of {args.rounds} rounds")
    print(f"{'side':<9} {'wall ms/job':>12} {'CPU ms/job':>11} {'tx/job':>7}")
    for s in sides:
        wall, cpu = med(s, "wall_s") * 1000, med(s, "cpu_s") * 1000
        print(f"{s:<9} {wall:12.3f} {cpu:11.3f} {med(s, 'tx'):7.2f}")
    figures = []
    if "serial" in sides:
        for s in sides:
            if s == "serial":
                continue
            figures.append(
                benchkit.figure(
                    f"store path CPU per job, {s} (vs one transaction per write)",
                    med(s, "cpu_s") * 1000,
                    "ms",
                    "lower than one transaction per write",
                    med("serial", "cpu_s") * 1000,
                    med("serial", "cpu_s") * 1000,
                    "one transaction per write",
                )
            )
    benchkit.report(
        "store_path",
        figures,
        jobs=args.jobs,
        concurrency=args.concurrency,
        sides={
            s: {
                "wall_ms_job": med(s, "wall_s") * 1000,
                "cpu_ms_job": med(s, "cpu_s") * 1000,
                "tx_job": med(s, "tx"),
            }
            for s in sides
        },
    )


if __name__ == "__main__":
    main()
