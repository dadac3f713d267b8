"""`comfysweep export` of a 10,000-job sweep: seconds per format.

    python benchmarks/export_10k.py [--jobs N] [--size BYTES]

Builds a synthetic finished sweep (no emulator: the export only reads the store and the disk): a
store of N jobs with a local conditioning image (one data: URI, stored once), every job done with
one output (a few small files hard-linked under N names), one job in 20 rated; then times each
format into a fresh DEST on the same file system (hard links), and `hf --copy` (copies). The
done state is written straight into the jobs table: this measures the export, not the runner.
Prints one line per format; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.export import ExportOptions, export_sweep
from orchestrator.locate import locate
from orchestrator.store import Store, sql

MODEL = "community/wan-2-2/vace-fun"
START = Path(__file__).parent.parent / "sweeps" / "start.png"
FORMATS = [("hf", False), ("parquet", False), ("csv", False), ("webdataset", False), ("hf", True)]


@dataclass(frozen=True)
class FakeJob:
    key: str
    index: int
    inputs: dict[str, Any]
    model_id: str = MODEL
    repeat: int = 0
    sources: dict[str, str] = field(default_factory=lambda: {"118_image": "start.png"})


def build(root: Path, jobs: int, size: int) -> Path:
    """A finished sweep's results folder under ``root``; returns its store file."""
    folder = root / "results" / "bench"
    folder.mkdir(parents=True)
    image = "data:image/png;base64," + base64.b64encode(START.read_bytes()).decode()
    originals = []
    for n in range(3):
        path = root / f"original-{n}.mp4"
        path.write_bytes(os.urandom(size))
        originals.append((path, hashlib.sha256(path.read_bytes()).hexdigest()))
    fakes = []
    for i in range(jobs):
        inputs = {
            "prompt": "a lighthouse at dusk",
            "118_image": image,
            "seed": i % 50,
            "steps": 4 + i % 8,
            "cfg": 1.0 + (i % 90) / 10,
        }
        key = hashlib.sha256(f"bench:{i}".encode()).hexdigest()
        fakes.append(FakeJob(key, i, inputs))
    store_path = folder / "comfysweep.db"
    with Store.open(store_path) as store:
        store.sync_jobs(fakes, MODEL)
        with store._tx(write=True) as conn:
            for job in fakes:
                original, digest = originals[job.index % len(originals)]
                name = f"job-{job.index:06d}.mp4"
                os.link(original, folder / name)
                output = {"path": name, "size": size, "sha256": digest, "url": "https://x/y.mp4"}
                done = {"state": "done", "outputs": json.dumps([output]), "cost": 0.25}
                conn.execute(sql.JOBS.update().where(sql.JOBS.c.key == job.key).values(**done))
        for job in fakes[::20]:
            store.rate(job.key, "up")
    return store_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=16_384, help="bytes per output file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        store = build(root, args.jobs, args.size)
        print(f"built a {args.jobs}-job sweep in {time.perf_counter() - t0:.1f} s")
        figures: dict[str, float] = {}
        for fmt, copy in FORMATS:
            name = f"{fmt}-copy" if copy else fmt
            dest = root / "exports" / name
            t0 = time.perf_counter()
            report = export_sweep(locate(None, str(store)), dest, ExportOptions(fmt, copy=copy))
            figures[name] = round(time.perf_counter() - t0, 2)
            assert report.rows == args.jobs, report
            print(
                f"export --format {fmt}{' --copy' if copy else ''}: {figures[name]:.2f} s "
                f"({report.rows} rows, {report.linked} linked, {report.copied} copied)"
            )
    print(json.dumps({"benchmark": "export_10k", "jobs": args.jobs, "seconds": figures}))


if __name__ == "__main__":
    main()
