"""Manifest rewrites during a 10,000-job run: how many, and how many bytes they write in all.

    python benchmarks/manifest_10k.py [--jobs 10000] [--concurrency 64]

Runs a sweep of --jobs jobs to the end (the library's run_sweep, in process) against an
emulator in its own process at its fastest, counting the whole writes of manifest.jsonl +
metadata.jsonl (ResultsFolder.write_manifest), the appends (append_manifest) and every byte
written to both files (the folder's own counter, ResultsFolder.bytes_written). The figure is the
bytes written over the final files' size: flat in the run's length when the files are appended to
as jobs move (a job's few moves, and the end's whole write), N for N whole rewrites.
This run is bound by the emulator encoding each job's video at its first download (~16 jobs/s on
2 cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import benchkit

from orchestrator import results, run_sweep

SPEC = """\
name: manifest
model: community/wan-2-2/vace-fun
inputs:
  prompt: "A lighthouse at dusk, waves breaking"
  image: https://example.com/lighthouse.png
  resolution: 480x480 (1:1)
  frames: 81
  seed: 7
axes:
  steps: {{start: 2, stop: 21, step: 1}}
  cfg: {cfgs}
run:
  concurrency: {concurrency}
  downloads: 8
  poll_interval: 0.01
  rate: 1000000
  output: {output}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="a multiple of 20")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    calls: list[dict[str, float]] = []
    appends: list[float] = []
    folders: list[results.ResultsFolder] = []
    whole, append = results.ResultsFolder.write_manifest, results.ResultsFolder.append_manifest

    def counted(self: results.ResultsFolder, rows: Any) -> int:
        began = time.perf_counter()
        lines = whole(self, rows)
        size = sum(
            (self.root / name).stat().st_size for name in (results.MANIFEST, results.METADATA)
        )
        calls.append({"seconds": time.perf_counter() - began, "bytes": size, "lines": lines})
        if self not in folders:
            folders.append(self)
        return lines

    def appended(self: results.ResultsFolder, rows: Any) -> int:
        began = time.perf_counter()
        lines = append(self, rows)
        appends.append(time.perf_counter() - began)
        return lines

    results.ResultsFolder.write_manifest = counted  # type: ignore[method-assign]
    results.ResultsFolder.append_manifest = appended  # type: ignore[method-assign]
    with (
        tempfile.TemporaryDirectory(prefix="comfysweep-manifest-") as tmp,
        benchkit.emulator() as base,
    ):
        folder = Path(tmp)
        os.environ["COMFYSWEEP_HOME"] = str(folder / "home")
        cfgs = [round(0.1 * (n + 1), 1) for n in range(max(1, args.jobs // 20))]
        spec = folder / "manifest.yaml"
        spec.write_text(
            SPEC.format(cfgs=cfgs, concurrency=args.concurrency, output=folder / "results")
        )
        began = time.perf_counter()
        report = run_sweep(spec, base_url=base, token=benchkit.TOKEN, yes=True)
        wall = time.perf_counter() - began
        done = report.counts.get("done", 0)
    written = sum(f.bytes_written for f in folders)
    final = calls[-1]["bytes"] if calls else 0
    spent = sum(c["seconds"] for c in calls) + sum(appends)
    print(f"{done} jobs done in {wall:.1f} s ({done / wall:.1f} jobs/s)")
    print(
        f"manifest: {len(calls)} whole writes, {len(appends)} appends, "
        f"{written / 2**20:.1f} MiB written in all"
    )
    print(f"final manifest + metadata: {final / 2**20:.2f} MiB; writing took {spent:.2f} s")
    figures = [
        benchkit.figure(
            f"{done:,}-job run: manifest bytes written / final size "
            f"({len(calls)} whole writes, {len(appends)} appends, {written / 2**20:.1f} MiB)",
            written / final if final else 0.0,
            "x",
            "incremental, O(changed jobs): flat in the run's length",
            4.0,
        )
    ]
    benchkit.report(
        "manifest_10k",
        figures,
        jobs=done,
        rewrites=len(calls),
        appends=len(appends),
        bytes_written=written,
        final_bytes=final,
        rewrite_seconds=round(spent, 3),
        wall_s=round(wall, 2),
    )


if __name__ == "__main__":
    main()
