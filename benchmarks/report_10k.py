"""How long `comfysweep report` takes for a finished 10,000-job sweep: cold (a poster to make
for every video) and again (posters cached).

    python benchmarks/report_10k.py [--jobs N]

The sweeps are synthetic (tests/reportdata.py): stores of done jobs whose outputs are small real
H.264 videos (160x160, 17 frames), first as hard links to 8 files (8 posters to make), then as a
file of its own each. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from click.testing import CliRunner

from orchestrator.cli import cli
from tests.reportdata import sample_videos, synthetic_sweep


def report(folder: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["report", "--store", str(folder / "comfysweep.db")])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    return elapsed, result.output.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs (a 25 x 20 x N grid)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = sample_videos(root / "samples", 8)
        cfgs = max(1, args.jobs // 500)
        shape = {"seed": range(25), "steps": range(20), "cfg": range(cfgs)}
        linked = root / "linked"
        t0 = time.perf_counter()
        jobs = synthetic_sweep(linked, shape, videos)
        print(f"synthetic store of {len(jobs)} done jobs: {time.perf_counter() - t0:.1f} s")
        reused, line = report(linked)
        print(
            f"report, {len(videos)} videos hard-linked {len(jobs)} times: {reused:.2f} s  [{line}]"
        )
        size = (linked / "report.html").stat().st_size
        print(f"report.html: {size / 1e6:.1f} MB")

        own = root / "own"
        synthetic_sweep(own, shape, videos, copy=True)
        cold, line = report(own)
        print(f"cold report, every job a video file of its own: {cold:.2f} s  [{line}]")
        warm, line = report(own)
        print(f"again, posters cached: {warm:.2f} s  [{line}]")
        figures = {
            "benchmark": "report_10k",
            "jobs": len(jobs),
            "cold_s": round(cold, 2),
            "cached_posters_s": round(warm, 2),
            "poster_ms_each": round((cold - warm) / len(jobs) * 1000, 2),
            "html_mb": round(size / 1e6, 2),
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
