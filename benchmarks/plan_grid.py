"""Time and peak memory of `plan --json` and of iterating every job of a 1,000,000-job grid.

    python benchmarks/plan_grid.py [--jobs-too]

Each measurement runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = """\
name: million
model: community/wan-2-2/vace-fun
inputs:
  prompt: "A lone figure in tactical gear walks through desert ruins at golden hour."
  image: start.png
  resolution: 480x480 (1:1)
axes:
  seed: {count: 1000, from: 1}
  cfg: {start: 0.1, stop: 10.0, step: 0.1}
  shift: {start: 1, stop: 10, step: 1}
"""

RULES = """\
include:
  - {seed: 7, cfg: 3.5, shift: 8}
exclude:
  - {cfg: 0.1}
  - {shift: 2, cfg: 0.2}
"""

ITERATE = """\
import sys
from orchestrator import iter_jobs, load_spec
n = 0
for job in iter_jobs(load_spec(sys.argv[1])):
    n += 1
print(n, job.key)
"""


def measure(label: str, argv: list[str]) -> None:
    """Run ``argv`` under a fresh watcher process and print its wall time and peak RSS."""
    watcher = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "out = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True).stdout\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "tail = out.strip().splitlines()[-1][:70] if out.strip() else ''\n"
        "if out.startswith('{'):\n"
        "    import json; tail = f\"jobs={json.loads(out)['jobs']}\"\n"
        "print(f'{wall:.2f} {peak / 1024:.1f} {tail}')\n"
    )
    done = subprocess.run([sys.executable, "-c", watcher, *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{label}: failed: {done.stderr.strip()}")
    wall, peak, *tail = done.stdout.split(maxsplit=2)
    note = "".join(tail).strip()
    print(f"{label:<42} {float(wall):7.2f} s  peak RSS {float(peak):7.1f} MiB  {note}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "million.yaml").write_text(SPEC)
        image = Path(__file__).resolve().parents[1] / "sweeps" / "start.png"
        (folder / "start.png").write_bytes(image.read_bytes())
        spec = str(folder / "million.yaml")
        measure("import orchestrator (baseline)", [sys.executable, "-c", "import orchestrator"])
        plan = [sys.executable, "-m", "orchestrator", "plan", "--json"]
        measure("comfysweep plan --json (1,000,000 jobs)", [*plan, spec])
        measure("iter_jobs: all 1,000,000 jobs with keys", [sys.executable, "-c", ITERATE, spec])
        (folder / "rules.yaml").write_text(SPEC + RULES)
        rules = str(folder / "rules.yaml")
        measure("plan --json, with include and exclude", [*plan, rules])


if __name__ == "__main__":
    main()
