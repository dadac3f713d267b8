"""`Store.claim(1)` on stores of 1k, 10k and 100k pending jobs: is a claim flat in store size?

    python benchmarks/claim_scale.py [--sizes 1000,10000,100000] [--claims 50] [--postgres URL]

Each store is synced with SIZE pending jobs, then claims one job at a time --claims times (each
a committed transaction, as the runner does); the median is reported. SQLite always (a file in
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


def copies(target: str, first: int, size: int) -> None:
    """Jobs ``first`` to ``size`` as SQL copies of job 0 (PostgreSQL's sync_jobs of 100k rows
    takes minutes: building the store is not what is measured)."""
    from orchestrator.store import sql

    names = [c.name for c in sql.JOBS.c]
    picked = {"key": "lpad(to_hex(g), 64, '0')", "index": "g", "rank": "g"}
    columns = ", ".join(f'"{n}"' for n in names)
    values = ", ".join(picked.get(n, f'"{n}"') for n in names)
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO jobs ({columns}) SELECT {values} FROM jobs "
            f'CROSS JOIN generate_series({first}, {size - 1}) AS g WHERE "index" = 0'
        )
        conn.exec_driver_sql("ANALYZE jobs")
    engine.dispose()


def claim_ms(target: str, size: int, claims: int, synced: int | None = None) -> float:
    """Median milliseconds of one claim(1) on a store of ``size`` pending jobs (the first
    ``synced`` of them by sync_jobs, the rest SQL copies)."""
    with Store.open(target) as store:
        store.sync_jobs(jobs(min(size, synced or size)), MODEL)
        if synced is not None and size > synced:
            copies(target, synced, size)
        times = []
        for _ in range(claims):
            began = time.perf_counter()
            got = store.claim(1)
            times.append(time.perf_counter() - began)
            assert len(got) == 1
    return statistics.median(times) * 1000


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


def postgres_sizes(url: str, sizes: list[int], claims: int) -> dict[int, float]:
    admin = sa.create_engine(url)
    out = {}
    try:
        for size in sizes:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            try:
                target = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
                out[size] = claim_ms(target, size, claims, synced=1000)
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
    results: dict[str, dict[int, float]] = {"sqlite": {}}
    plan = ""
    with tempfile.TemporaryDirectory(prefix="comfysweep-claim-") as tmp:
        for size in sizes:
            target = str(Path(tmp, f"claim{size}.db"))
            results["sqlite"][size] = claim_ms(target, size, args.claims)
            plan = sqlite_plan(target)
    if args.postgres:
        results["postgresql"] = postgres_sizes(args.postgres, sizes, args.claims)
    print(f"claim(1), median of {args.claims} claims, milliseconds")
    print(f"{'store':<12}" + "".join(f"{s:>12,}" for s in sizes))
    for name, row in results.items():
        print(f"{name:<12}" + "".join(f"{row[s]:12.3f}" for s in sizes))
    print(f"SQLite plan of the claim: {plan}")
    largest, smallest = max(sizes), min(sizes)
    figures = []
    for name, row in results.items():
        growth = row[largest] / row[smallest]
        figures.append(
            benchkit.figure(
                f"claim(1) on {largest:,} pending jobs ({name}; {row[smallest]:.2f} ms "
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
