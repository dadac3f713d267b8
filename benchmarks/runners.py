"""Several runners on one PostgreSQL store: claims per second and jobs/s with 1, 2 and 4 runners.

    python benchmarks/runners.py [--jobs 1000] [--concurrency 64] [--runners 1,2,4]
                                 [--postgres URL]

One emulator in its own process at its fastest (speed 1e9), warmed first by one pass of the bare
aiohttp loop over the same jobs (its video encoding, ~16 jobs/s on 2 cores, would bound every
run otherwise). Then, in the same run: SQLite's single `comfysweep run` (a file store), and 1, 2
and 4 `comfysweep run` processes of the same spec started together on one fresh PostgreSQL
schema (their concurrency is the store's, shared). For each:

- claims/s: the claims the store recorded (its attempts) over the span from the first to the
  last (what the runners' claim path sustains, start-up and the tail left out);
- jobs/s: the jobs over the wall time from starting the runners to the last one's exit;
- lock waits (PostgreSQL): a sampler reads pg_locks every few milliseconds for the runners'
  sessions (application_name) and keeps each wait's longest age seen (now() - waitstart): the
  issue's promise is that no runner waits on another's transaction longer than one claim.
  Sampling sees waits longer than its interval; the longest one is a lower bound of the truth.

The PostgreSQL of `.ci/postgres` runs with fsync=off: its commits skip the disk flush that
SQLite's durable commits pay (synchronous_commit stays on; a real server flushes).

Also checks the emulator billed each job once (its ledger: one submission per input).
Needs --postgres or COMFYSWEEP_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import benchkit
import httpx
import sqlalchemy as sa
import throughput

from orchestrator.store import JobState, Store

# The runners' sessions, told apart from other clients of the server by their application name.
APP = f"comfysweep-runners-{uuid.uuid4().hex[:8]}"
# The runners' waits for a lock: on what (a transaction id: another transaction's row lock, such
# as the ledger row every claim updates), the waiter's statement, and what the transaction it
# waits for is doing ("idle in transaction": its runner holds the lock between statements).
SAMPLE = """
SELECT l.pid, l.locktype, COALESCE(c.relname, ''), l.waitstart,
       EXTRACT(EPOCH FROM clock_timestamp() - l.waitstart) * 1000,
       left(a.query, 30), COALESCE(b.state, '?'), left(COALESCE(b.query, '?'), 30)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN pg_class c ON c.oid = l.relation
LEFT JOIN LATERAL (
    SELECT state, query FROM pg_stat_activity WHERE pid = (pg_blocking_pids(l.pid))[1]
) b ON true
WHERE NOT l.granted AND l.waitstart IS NOT NULL AND a.application_name = %s
"""


_LEDGER_LAST = ("idle in transaction (WITH reserve AS", "idle in transaction (UPDATE ledger")


class LockSampler:
    """A thread reading the runners' lock waits from pg_locks until stopped."""

    def __init__(self, url: str, every: float = 0.002) -> None:
        self.url = url
        self.every = every
        self.waits: dict[tuple[int, Any], tuple[float, str]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psycopg

        dsn = self.url.replace("postgresql+psycopg://", "postgresql://").split("?")[0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(SAMPLE, (APP,)).fetchall()
                self.samples += 1
                for pid, kind, relation, start, age, query, state, holder in rows:
                    on = " ".join(
                        f"{kind} {relation}: {' '.join(query.split())}... waits for a "
                        f"transaction {state} ({' '.join(holder.split())}...)".split()
                    )
                    seen = self.waits.get((pid, start))
                    if seen is None or float(age) > seen[0]:
                        self.waits[(pid, start)] = (float(age), on)
                time.sleep(self.every)

    def longest(self) -> tuple[float, str]:
        return max(self.waits.values(), default=(0.0, "none"))


def child(target: str, spec: Path, base: str) -> None:
    """One `comfysweep run` of ``spec`` on ``target``, per-job log lines off (as throughput.py)."""
    import logging

    from orchestrator.cli import cli

    os.environ["RUNCOMFY_MODEL_API_BASE"] = base
    os.environ["RUNCOMFY_API_TOKEN"] = benchkit.TOKEN
    logging.disable(logging.INFO)
    cli.main(["run", str(spec), "--store", target, "--yes"], standalone_mode=False)


def one_round(target: str, runners: int, jobs: int, conc: int, base: str) -> dict[str, Any]:
    """``runners`` processes on ``target`` (a fresh store) over one spec of ``jobs`` jobs."""
    with tempfile.TemporaryDirectory(prefix="comfysweep-runners-") as tmp:
        spec = throughput.write_spec(Path(tmp), jobs, conc, 0.01)
        env = {**os.environ, "COMFYSWEEP_HOME": str(Path(tmp, "home"))}
        argv = [sys.executable, __file__, "--child", target, str(spec), base]
        before = httpx.get(f"{base.removesuffix('/v1')}/_emulator/ledger", timeout=30).json()
        began = time.perf_counter()
        procs = [
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(runners)
        ]
        errors = [p.communicate(timeout=3600)[1] for p in procs]
        wall = time.perf_counter() - began
        # 3: "not complete": a runner that ran out of pending jobs leaves while others finish
        # theirs; the store's counts below say whether the sweep is done.
        if any(p.returncode not in (0, 3) for p in procs):
            codes = [p.returncode for p in procs]
            bad = next(e for p, e in zip(procs, errors, strict=True) if p.returncode not in (0, 3))
            raise SystemExit(f"runners exited {codes}: {bad.decode()[-3000:]}")
        after = httpx.get(f"{base.removesuffix('/v1')}/_emulator/ledger", timeout=30).json()
        with Store.open(target, readonly=True) as store:
            opened = sorted(a.opened_at for a in store.attempts())
            counts = {state: n for state, n in store.counts().items() if n}
            done = counts.get(JobState.DONE.value, 0)
            runs = len(store.runs())
    billed = _billed_once(before, after)
    if billed < 0:
        raise SystemExit(f"{runners} runner(s): a job was submitted twice ({counts})")
    if done != jobs or billed != jobs:
        print(f"!! {runners} runner(s): {done} of {jobs} done ({counts}), {billed} billed once")
    span = (opened[-1] - opened[0]).total_seconds()
    return {
        "claims_s": (len(opened) - 1) / span if span > 0 else float("inf"),
        "jobs_s": jobs / wall,
        "wall_s": wall,
        "runs": runs,
        "done": done,
        "billed_once": billed,
    }


def _billed_once(before: dict[str, Any], after: dict[str, Any]) -> int:
    """How many inputs were submitted (and billed) this round, or -1 if any was twice."""
    old = before.get("submissions_by_input", {})
    grown = [n - old.get(key, 0) for key, n in after.get("submissions_by_input", {}).items()]
    return -1 if any(g > 1 for g in grown) else sum(1 for g in grown if g == 1)


def pg_target(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}&application_name={APP}"


def one_claim_ms(url: str) -> float:
    """The median claim_within on this server, on a store of 1,000 jobs: what "one claim" lasts
    here, now (claim_scale.py's measure)."""
    import claim_scale

    admin = sa.create_engine(url)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        return claim_scale.claim_ms(pg_target(url, schema), 1000, 100)["claim_within"]
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def pg_round(url: str, runners: int, args: argparse.Namespace, base: str) -> dict[str, Any]:
    admin = sa.create_engine(url)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        target = pg_target(url, schema)
        with Store.open(target) as store:  # migrated before the runners race for it
            store.set_meta("created", True)
        with LockSampler(url) as sampler:
            got = one_round(target, runners, args.jobs, args.concurrency, base)
        longest, on = sampler.longest()
        waits = [age for age, _ in sampler.waits.values()]
        # Waits on a transaction whose last statement was its claim's or settle's ledger update:
        # between that and its COMMIT, the holder runs no work of its own (any wait there is
        # the holder's process waiting for a CPU).
        ons = [on for _, on in sampler.waits.values()]
        right_after = sum(1 for on in ons if any(last in on for last in _LEDGER_LAST))
        return got | {
            "waits_after_ledger_statement": right_after,
            "longest_wait_ms": longest,
            "median_wait_ms": statistics.median(waits) if waits else 0.0,
            "longest_wait_on": on,
            "waits_seen": len(waits),
            "samples": sampler.samples,
        }
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runners", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--postgres", default=os.environ.get("COMFYSWEEP_TEST_POSTGRES_URL"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        target, spec, base = args.child
        child(target, Path(spec), base)
        return
    if not args.postgres:
        raise SystemExit("runners.py needs --postgres or COMFYSWEEP_TEST_POSTGRES_URL")
    counts = [int(n) for n in args.runners.split(",")]
    rows: dict[str, list[dict[str, Any]]] = {"sqlite x1": []}
    rows |= {f"postgresql x{n}": [] for n in counts}
    with benchkit.emulator(speed=1e9) as base:
        throughput.throughput_round("aiohttp", base, args.jobs, args.concurrency)  # warm
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="comfysweep-runners-db-") as tmp:
                target = str(Path(tmp, "comfysweep.db"))
                rows["sqlite x1"].append(one_round(target, 1, args.jobs, args.concurrency, base))
            for runners in counts:
                got = pg_round(args.postgres, runners, args, base)
                rows[f"postgresql x{runners}"].append(got)
            for name, got_rows in rows.items():
                got = got_rows[-1]
                wait = (
                    f"  longest lock wait {got['longest_wait_ms']:7.2f} ms on "
                    f"{got['longest_wait_on']} ({got['waits_seen']} waits seen)"
                    if "longest_wait_ms" in got
                    else ""
                )
                print(
                    f"round {n + 1} {name:<14} {got['claims_s']:8.1f} claims/s "
                    f"{got['jobs_s']:7.1f} jobs/s{wait}",
                    flush=True,
                )
    report(rows, args, one_claim_ms(args.postgres))


def report(rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, claim: float) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    print(f"\n{args.jobs} jobs, concurrency {args.concurrency} (store-wide), medians")
    print(f"{'store x runners':<16} {'claims/s':>9} {'jobs/s':>8} {'longest lock wait':>18}")
    for name, got in rows.items():
        wait = ""
        if name.startswith("postgresql"):
            wait = f"{max(r['longest_wait_ms'] for r in got):15.2f} ms"
        print(f"{name:<16} {med(name, 'claims_s'):9.1f} {med(name, 'jobs_s'):8.1f} {wait:>18}")
    sqlite = med("sqlite x1", "claims_s")
    figures = []
    for name in rows:
        if name.startswith("postgresql"):
            figures.append(
                benchkit.figure(
                    f"claims/s, {name.removeprefix('postgresql x')} runner(s), 1 PostgreSQL store "
                    f"({med(name, 'jobs_s'):.1f} jobs/s)",
                    med(name, "claims_s"),
                    "claims/s",
                    "measured beside SQLite's single runner (no target)",
                    0.0,
                    sqlite,
                    "SQLite, 1 runner",
                    higher=True,
                )
            )
    waits = [r for name, got in rows.items() if name.startswith("postgresql") for r in got]
    worst = max(waits, key=lambda r: r["longest_wait_ms"])
    median = statistics.median(r["median_wait_ms"] for r in waits)
    print(f"one claim_within on this server now: {claim:.3f} ms (median, 1,000-job store)")
    print(f"longest lock wait: {worst['longest_wait_ms']:.2f} ms, {worst['longest_wait_on']}")
    seen = sum(r["waits_seen"] for r in waits)
    after = sum(r["waits_after_ledger_statement"] for r in waits)
    print(f"{after} of {seen} waits seen were on a transaction idle right after its ledger update")
    figures.append(
        benchkit.figure(
            f"longest lock wait between runners (median wait {median:.2f} ms; the holder: "
            f"{worst['longest_wait_on'].split(' waits for a transaction ')[-1]})",
            worst["longest_wait_ms"],
            "ms",
            "no longer than one claim",
            claim,
            claim,
            "one claim_within, same server",
        )
    )
    benchkit.report(
        "runners",
        figures,
        jobs=args.jobs,
        concurrency=args.concurrency,
        rows={
            name: {k: v for k, v in got[-1].items() if not isinstance(v, str)}
            for name, got in rows.items()
        },
    )


if __name__ == "__main__":
    main()
