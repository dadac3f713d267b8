"""Time and peak memory of `comfysweep plan` on the hostile spec shapes of issue 8.

    python benchmarks/spec_shapes.py [--images 10000] [--timeout 120]

Each measurement runs `python -m orchestrator plan --json` in a fresh subprocess (so its peak RSS
is its own), under a timeout; it prints the wall time, the peak RSS and the exit status or the one
error line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

HEAD = """\
model: community/wan-2-2/vace-fun
inputs:
  prompt: a fox
  image: https://example.com/fox.png
"""

# 9 levels of 10 aliases: 10**9 values once expanded, in well under a kilobyte.
BOMB = HEAD + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}' if i else 'lol'] * 10)}]\n" for i in range(9)
)

# A 2 x 13 x 39 x 100 x 300 grid (30,420,000 jobs) where frames and fps vary, 20 exclude rules.
RULES = (
    HEAD
    + """\
axes:
  frames: [81, 141]
  fps: [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]
  steps: {start: 2, stop: 40, step: 1}
  cfg: {start: 0.1, stop: 10.0, step: 0.1}
  seed: {count: 300, from: 1}
exclude:
"""
    + "".join(f"  - {{fps: {12 + i % 13}, steps: {2 + i}}}\n" for i in range(20))
)

WATCHER = """\
import resource, subprocess, sys, time
t = time.perf_counter()
try:
    done = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
    status, err = done.returncode, done.stderr.strip().splitlines()
    out = done.stdout
except subprocess.TimeoutExpired:
    status, err, out = "timeout", [], ""
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
note = err[-1][:90] if err else ""
if out.startswith("{"):
    import json
    plan = json.loads(out)
    note = f"jobs={plan['jobs']} output_seconds={plan['output_seconds']}"
print(f"{wall:8.2f} s  peak RSS {peak:7.1f} MiB  exit {status}  {note}")
"""


def measure(label: str, spec: Path, timeout: float) -> None:
    argv = [sys.executable, "-m", "orchestrator", "plan", "--json", str(spec)]
    done = subprocess.run(
        [sys.executable, "-c", WATCHER, str(timeout), *argv], capture_output=True, text=True
    )
    print(f"{label:<44} {done.stdout.strip() or done.stderr.strip()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bomb.yaml").write_text(BOMB)
        measure(f"alias bomb ({len(BOMB)} bytes)", folder / "bomb.yaml", args.timeout)
        (folder / "rules.yaml").write_text(RULES)
        measure("frames/fps vary, 20 exclude rules", folder / "rules.yaml", args.timeout)
        images = folder / "images"
        images.mkdir()
        for i in range(args.images):  # real PNGs (inputs are known by content), all one size
            pixel = Image.new("RGB", (1, 1), (i % 256, i // 256 % 256, i // 65536 % 256))
            pixel.save(images / f"{i:06d}.png", compress_level=0)
        glob = folder / "glob.yaml"
        glob.write_text(HEAD.replace("  image: https://example.com/fox.png\n", "") + GLOB)
        measure(f"glob of {args.images:,} images of one size", glob, args.timeout)


GLOB = """\
axes:
  image: {glob: "images/*.png"}
"""

if __name__ == "__main__":
    main()
