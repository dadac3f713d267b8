"""What the run order costs: iterating and syncing a 1,000,000-job grid in grid, breadth and
shuffle order (each rank is computed per job, from its grid place, while the jobs stream).

    python benchmarks/order_sync.py [--seeds N] [--iterate-only] [--orders grid,breadth]

Each measurement runs in a fresh subprocess (its own peak RSS) against a fresh SQLite store;
``--seeds 100`` makes it a 100,000-job grid. The last line is JSON: seconds per order and the
breadth/grid and shuffle/grid ratios of the sync.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = """\
name: million
model: community/wan-2-2/vace-fun
inputs:
  prompt: "A lone figure in tactical gear walks through desert ruins at golden hour."
  image: https://example.com/start.png
  resolution: 480x480 (1:1)
axes:
  seed: {{count: {seeds}, from: 1}}
  cfg: {{start: 0.1, stop: 10.0, step: 0.1}}
  shift: {{start: 1, stop: 10, step: 1}}
run:
  order: {order}
"""

WORK = """\
import resource, sys, time
from orchestrator import iter_jobs, load_spec
from orchestrator.store import Store
spec = load_spec(sys.argv[1])
t = time.perf_counter()
if sys.argv[3] == "iterate":
    n = sum(1 for _ in iter_jobs(spec))
else:
    with Store.open(sys.argv[2]) as store:
        n = store.sync_jobs(iter_jobs(spec), spec.model).total
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{wall:.2f} {peak:.1f} {n}")
"""


def measure(folder: Path, order: str, seeds: int, what: str) -> float:
    spec = folder / f"{order}-{what}.yaml"
    spec.write_text(SPEC.format(order=order, seeds=seeds))
    store = folder / f"{order}-{what}.db"
    argv = [sys.executable, "-c", WORK, str(spec), str(store), what]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    wall, peak, jobs = float(out[0]), float(out[1]), int(out[2])
    print(f"{what:8} {order:8} {jobs:>9,} jobs  {wall:7.2f} s  peak {peak:7.1f} MiB", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="1000: a 1,000,000-job grid")
    parser.add_argument("--iterate-only", action="store_true", help="skip the store syncs")
    parser.add_argument("--orders", default="grid,breadth,shuffle", help="grid first")
    args = parser.parse_args()
    orders = args.orders.split(",")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for what in ("iterate",) if args.iterate_only else ("iterate", "sync"):
            for order in orders:
                figures[f"{what}_{order}_s"] = measure(Path(tmp), order, args.seeds, what)
    what = "iterate" if args.iterate_only else "sync"
    for order in orders[1:]:
        ratio = figures[f"{what}_{order}_s"] / figures[f"{what}_grid_s"]
        figures[f"{what}_{order}_vs_grid"] = round(ratio, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
