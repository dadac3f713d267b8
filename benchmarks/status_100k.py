"""How long `comfysweep status` (and show, failures, runs) take on a 100,000-job store.

    python benchmarks/status_100k.py [--jobs 100000] [--rounds 5]

Builds an SQLite store the way a long sweep leaves it: 90% done, 5% failed with a few kinds of
error (request ids inside), the rest pending or in flight; five events and one attempt per job
that ran. Then times the read-only views: in process (the library call, median of --rounds),
and as a user runs them (a fresh `python -m orchestrator` process each, imports included).
Beside them, the bare reference: a raw sqlite3 count of the jobs by state, in process. The
last line is one JSON object (benchkit's figures: status in process and as a command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import benchkit

from orchestrator.store import Store
from orchestrator.views import list_failures, show_job, sweep_status

MODEL = "community/wan-2-2/vace-fun"
ERRORS = [
    '"Sampler failed: CUDA out of memory (emulated fault)"',
    '{"message":"KSampler: NaN in latents","type":"ExecutionError"}',
]


class _Job:
    def __init__(self, i: int) -> None:
        self.key = hashlib.sha256(str(i).encode()).hexdigest()
        self.index = i
        self.model_id = MODEL
        self.inputs = {"prompt": "a fox", "seed": i // 100, "steps": i % 10, "cfg": i // 10 % 10}
        self.repeat = 0
        self.sources: dict[str, str] = {}


def build(path: Path, jobs: int) -> None:
    with Store.open(path) as db:
        db.sync_jobs((_Job(i) for i in range(jobs)), MODEL)
        with db.lock("comfysweep run bench"):
            pass  # one finished run
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    raw = sqlite3.connect(path)
    keys = [k for (k,) in raw.execute('SELECT key FROM jobs ORDER BY "index"')]
    events, attempts, updates = [], [], []
    for i, key in enumerate(keys):
        share = i / jobs
        if share >= 0.99:
            continue  # pending
        at = start + timedelta(seconds=7200 * share)
        rid = str(uuid.uuid4())
        if share < 0.90:
            state, error, path_ = "done", None, [{"path": f"{key[:10]}.mp4", "url": "u"}]
            chain = ["submitting", "queued", "running", "succeeded", "done"]
        elif share < 0.95:
            error = ERRORS[i % 2] if i % 3 else f'"request {rid} timed out after {i}.5 s"'
            state, path_ = "failed", []
            chain = ["submitting", "queued", "running", "failed"]
        else:
            state, error, path_ = ("queued", "running")[i % 2], None, []
            chain = ["submitting", "queued", "running"][: 2 + i % 2]
        previous = "pending"
        for n, to in enumerate(chain):
            when = str(at + timedelta(seconds=n))
            events.append((key, previous, to, when, None, rid, 1))
            previous = to
        attempts.append((key, 1, 1, rid, 0.25, 0.25 if state in ("done", "failed") else None))
        updates.append((state, error, json.dumps(path_), rid, str(at), key))
    raw.executemany(
        "INSERT INTO events (job_key, from_state, to_state, at, detail, request_id, run_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        events,
    )
    raw.executemany(
        "INSERT INTO attempts (job_key, attempt, run_id, request_id, estimate_usd, charge_usd, "
        "opened_at) VALUES (?, ?, ?, ?, ?, ?, '2026-01-01 00:00:00')",
        attempts,
    )
    raw.executemany(
        "UPDATE jobs SET state = ?, error = ?, outputs = ?, request_id = ?, attempts = 1, "
        "submitted_at = ? WHERE key = ?",
        updates,
    )
    raw.execute("UPDATE ledger SET spent_usd = ?, cap_usd = NULL", (0.25 * jobs * 0.95,))
    raw.commit()
    raw.close()


def timed(call: object, rounds: int) -> float:
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()  # type: ignore[operator]
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def cli_seconds(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "comfysweep.db")
        began = time.perf_counter()
        build(path, args.jobs)
        print(f"built a {args.jobs:,}-job store in {time.perf_counter() - began:.1f}s")
        store = str(path)
        status = timed(lambda: sweep_status(store=store), args.rounds)
        with Store.open(path, readonly=True) as db:
            key = next(iter(db.jobs())).key

        def failures() -> None:
            with list_failures(store=store) as listed:
                for _ in listed.rows:
                    pass

        show = timed(lambda: show_job(key[:8], store=store), args.rounds)
        failed = timed(failures, max(1, args.rounds // 2))

        def bare_count() -> None:
            raw = sqlite3.connect(store)
            raw.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
            raw.close()

        counted = timed(bare_count, args.rounds)
        status_cli = statistics.median(
            cli_seconds("status", "--store", store) for _ in range(max(1, args.rounds // 2))
        )
        bare = cli_seconds("--help")
        extra = {
            "jobs": args.jobs,
            "bare_count_s": round(counted, 4),
            "status_s": round(status, 4),
            "status_cli_s": round(status_cli, 3),
            "cli_startup_s": round(bare, 3),
            "show_s": round(show, 4),
            "failures_all_s": round(failed, 3),
            "failed_jobs": sweep_status(store=store)["failed_jobs"],
        }
    print(f"status: {status * 1000:.1f} ms in process, {status_cli:.2f} s as a command")
    print(f"(a bare `comfysweep --help` takes {bare:.2f} s: Python and imports)")
    print(f"show JOB: {show * 1000:.1f} ms; failures (every failed job): {failed:.2f} s")
    print(f"bare sqlite3 count by state: {counted * 1000:.1f} ms")
    n = f"{args.jobs:,}"
    figures = [
        benchkit.figure(
            f"`status` on a {n}-job store, in process",
            status,
            "s",
            "<= 0.3 s",
            0.3,
            counted,
            "bare sqlite3 count",
        ),
        benchkit.figure(
            f"`comfysweep status` on a {n}-job store, as a command (imports too)",
            status_cli,
            "s",
            "<= 0.3 s",
            0.3,
            bare,
            "`comfysweep --help`",
        ),
    ]
    benchkit.report("status_100k", figures, **extra)


if __name__ == "__main__":
    main()
