"""`comfysweep run` on a 100,000-job store, half done: seconds from the command to its first submit.

    python benchmarks/resume_100k.py [--sizes 10000,100000] [--rounds 3]

For each size, a spec of that many jobs is synced into an SQLite store (the library's own
sync_jobs), and half of its jobs are marked done with SQL (no outputs recorded, so no file is
checked). Each round copies that store, starts `python -m orchestrator run SPEC --store COPY`
against an emulator in its own process (fastest mode) and watches the emulator's request
counter; the figure is the time from the process start to the first submit the emulator
answers (interpreter start, imports, spec load, sync, resume: everything a user waits for).
The run is killed there. Medians of --rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchkit

from orchestrator.grid import iter_jobs
from orchestrator.spec import load_spec
from orchestrator.store import Store

SPEC = """\
name: resume
model: community/wan-2-2/vace-fun
inputs:
  prompt: "A lighthouse at dusk, waves breaking"
  image: https://example.com/lighthouse.png
  resolution: 480x480 (1:1)
  frames: 81
axes:
  seed: {{count: {seeds}, from: 1}}
  steps: {{start: 2, stop: 21, step: 1}}
  cfg: [1.0, 2.0, 3.0, 4.0, 5.0]
run:
  concurrency: 64
  rate: 1000000
  poll_interval: 0.01
  output: {output}
"""


def build(folder: Path, jobs: int) -> tuple[Path, Path]:
    """The spec of ``jobs`` jobs and its store, half of it done."""
    spec = folder / f"resume{jobs}.yaml"
    spec.write_text(SPEC.format(seeds=max(1, jobs // 100), output=folder / "results"))
    store = folder / f"resume{jobs}.db"
    loaded = load_spec(spec)
    with Store.open(store) as db:
        db.sync_jobs(iter_jobs(loaded), loaded.models)
    raw = sqlite3.connect(store)
    raw.execute(
        "UPDATE jobs SET state = 'done', outputs = '[]', attempts = 1 WHERE \"index\" % 2 = 0"
    )
    raw.commit()
    raw.close()
    return spec, store


def first_submit(base: str, spec: Path, store: Path, copy: Path) -> float:
    for old in copy.parent.glob(copy.name + "*"):  # a killed run's WAL must not meet a new copy
        old.unlink()
    shutil.copyfile(store, copy)
    env = os.environ | {"RUNCOMFY_MODEL_API_BASE": base, "RUNCOMFY_API_TOKEN": benchkit.TOKEN}
    before = benchkit.served(base).get("submit", 0)
    command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--store", str(copy)]
    began = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--yes"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while benchkit.served(base).get("submit", 0) == before:
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise SystemExit(f"the run ended before a submit: {proc.stderr.read()[-500:]!r}")
            time.sleep(0.01)
        return time.perf_counter() - began
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    seconds: dict[int, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="comfysweep-resume-") as tmp,
        benchkit.emulator() as base,
    ):
        folder = Path(tmp)
        os.environ["COMFYSWEEP_HOME"] = str(folder / "home")
        for size in sizes:
            began = time.perf_counter()
            spec, store = build(folder, size)
            print(f"built a {size:,}-job store, half done, in {time.perf_counter() - began:.1f} s")
            times = [
                first_submit(base, spec, store, folder / "copy.db") for _ in range(args.rounds)
            ]
            seconds[size] = statistics.median(times)
            print(f"  run to first submit: median {seconds[size]:.2f} s ({times})")
    largest = max(sizes)
    others = ", ".join(f"{seconds[s]:.2f} s at {s:,}" for s in sizes if s != largest)
    name = f"`run` on a {largest:,}-job store, half done, to first submit"
    figures = [
        benchkit.figure(
            name + (f" ({others})" if others else ""),
            seconds[largest],
            "s",
            "<= 2 s",
            2.0,
        )
    ]
    benchkit.report(
        "resume_100k", figures, seconds={str(s): round(v, 3) for s, v in seconds.items()}
    )


if __name__ == "__main__":
    main()
