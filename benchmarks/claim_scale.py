"""One claim on stores of 1k, 10k and 100k pending jobs: is a claim flat in store size?

    python benchmarks/claim_scale.py [--sizes 1000,10000,100000] [--claims 50] [--postgres URL]

Each store is synced with SIZE pending jobs (all of them, PostgreSQL's too), then claims one job
at a time --claims times with `Store.claim(1)` and as many with `Store.claim_within` (the
runner's claim: pick, estimate, reserve under the cap), alternating (each a committed
transaction, as the runner does); the medians are reported. SQLite always (a file in
a temporary folder); PostgreSQL too given --postgres or COMFYSWEEP_TEST_POSTGRES_URL (a schema
of its own, dropped afterwards). Also prints SQLite's query plan of the claim.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import benchkit
import sqlalchemy as sa
from benchkit import MODEL, jobs

from orchestrator.store import Store


def claim_ms(target: str, size: int, claims: int) -> dict[str, float]:
    """Median milliseconds of one claim on a store of ``size`` pending jobs, by kind: claim(1),
    and claim_within (what the runner calls: the pick, the estimate, the reservation under a cap
    and a store-wide concurrency), ``claims`` of each, alternating."""
    with Store.open(target) as store:
        store.sync_jobs(jobs(size), MODEL)
        kinds = {
            "claim(1)": lambda: len(store.claim(1)) == 1,
            "claim_within": lambda: (
                store.claim_within(lambda _: 0.01, cap=1e9, concurrency=10**9).row is not None
            ),
        }
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(claims):
            for kind, claim in kinds.items():
                began = time.perf_counter()
                got = claim()
                times[kind].append(time.perf_counter() - began)
                assert got
    return {kind: statistics.median(t) * 1000 for kind, t in times.items()}


def sqlite_plan(target: str) -> str:
    """SQLite's plan for the claim's pick (a TEMP B-TREE there sorts the whole pending set)."""
    import sqlite3

    from sqlalchemy.dialects import sqlite

    from orchestrator.store import sql

    pick = sql.PICK.params(p_limit=1)
    text = str(pick.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    raw = sqlite3.connect(target)
    try:
        rows = raw.execute(f"EXPLAIN QUERY PLAN {text}").fetchall()
    except sqlite3.Error as exc:
        return f"(no plan: {exc})"
    finally:
        raw.close()
    return "; ".join(str(row[-1]) for row in rows)


def postgres_sizes(url: str, sizes: list[int], claims: int) -> dict[int, dict[str, float]]:
    admin = sa.create_engine(url)
    out = {}
    try:
        for size in sizes:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            try:
                target = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
                out[size] = claim_ms(target, size, claims)
            finally:
                with admin.begin() as conn:
                    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    finally:
        admin.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--claims", type=int, default=50)
    parser.add_argument("--postgres", default=os.environ.get("COMFYSWEEP_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    by_size: dict[str, dict[int, dict[str, float]]] = {"sqlite": {}}
    plan = ""
    with tempfile.TemporaryDirectory(prefix="comfysweep-claim-") as tmp:
        for size in sizes:
            target = str(Path(tmp, f"claim{size}.db"))
            by_size["sqlite"][size] = claim_ms(target, size, args.claims)
            plan = sqlite_plan(target)
    if args.postgres:
        by_size["postgresql"] = postgres_sizes(args.postgres, sizes, args.claims)
    # "postgresql claim_within": {size: ms}
    results = {
        f"{backend} {kind}": {size: row[size][kind] for size in sizes}
        for backend, row in by_size.items()
        for kind in row[sizes[0]]
    }
    print(f"one claim, median of {args.claims} claims, milliseconds")
    print(f"{'store':<26}" + "".join(f"{s:>12,}" for s in sizes))
    for name, row in results.items():
        print(f"{name:<26}" + "".join(f"{row[s]:12.3f}" for s in sizes))
    print(f"SQLite plan of the claim: {plan}")
    largest, smallest = max(sizes), min(sizes)
    figures = []
    for name, row in results.items():
        backend, kind = name.split(" ")
        growth = row[largest] / row[smallest]
        figures.append(
            benchkit.figure(
                f"{kind} on {largest:,} pending jobs ({backend}; {row[smallest]:.2f} ms "
                f"at {smallest:,}, {growth:.1f}x)",
                row[largest],
                "ms",
                "< 1 ms, flat in store size",
                1.0,
            )
        )
    if not args.postgres:
        print("PostgreSQL: not measured (no --postgres, no COMFYSWEEP_TEST_POSTGRES_URL)")
    benchkit.report(
        "claim_scale",
        figures,
        claims=args.claims,
        ms={name: {str(s): round(v, 4) for s, v in row.items()} for name, row in results.items()},
        sqlite_plan=plan,
    )


if __name__ == "__main__":
    main()
