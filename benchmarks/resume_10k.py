"""A 10,000-job sweep on the emulator: throughput of a first run, then what resuming costs.

    python benchmarks/resume_10k.py [--jobs N] [--rounds 3]

1. run the sweep to the end against an emulator in its own process at full speed (one seed and
   one prompt, so it encodes one video; every job is still submitted, polled and fetched);
2. `run` again on the finished store: sync the spec, check every file, rewrite the manifest
   (the cost of resuming a sweep that has nothing left to do), median of --rounds;
3. delete 10% of the outputs and `run` again: they are fetched again, nothing is paid twice.
Prints figures; asserts only that the ledger shows each input created once.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator import run_sweep
from orchestrator.sweep import Overrides

SPEC = """\
name: resume
model: community/wan-2-2/vace-fun
inputs:
  prompt: "A lighthouse at dusk, waves breaking"
  image: https://example.com/lighthouse.png
  resolution: 480x480 (1:1)
  frames: 81
  seed: 7
axes:
  steps: {{start: 2, stop: 40, step: 1}}
  cfg: {{start: 0.0, stop: 10.0, step: 0.1}}
  shift: {{start: 1, stop: {shifts}, step: 1}}
run:
  concurrency: 64
  downloads: 8
  output: out
"""


@dataclass
class Remote:
    base_url: str
    token: str = "emulator-token"

    def ledger(self) -> dict[str, Any]:
        origin = self.base_url.removesuffix("/v1")
        answer: dict[str, Any] = httpx.get(f"{origin}/_emulator/ledger", timeout=60).json()
        return answer


@contextlib.contextmanager
def emulator_process() -> Iterator[Remote]:
    """`comfysweep emulator` in a process of its own, as the real API would be."""
    command = [sys.executable, "-m", "orchestrator", "emulator", "--port", "0"]
    command += ["--speed", "1e9", "--workers", "64", "--balance", "1e9"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield Remote(proc.stdout.readline().strip())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shifts = max(1, round(args.jobs / (39 * 101)))
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "resume.yaml"
        spec.write_text(SPEC.format(shifts=shifts))
        fast = Overrides(poll_interval=0.05)
        with emulator_process() as emu:
            started = time.perf_counter()
            first = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=fast)
            elapsed = time.perf_counter() - started
            jobs = sum(first.counts.values())
            print(f"first run: {jobs} jobs in {elapsed:.1f} s ({jobs / elapsed:.0f} jobs/s)")
            print(f"  states: { {k: v for k, v in first.counts.items() if v} }")

            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                again = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=fast)
                times.append(time.perf_counter() - t0)
                assert again.complete
            print(
                f"resume a finished {jobs}-job sweep: median {statistics.median(times):.2f} s "
                f"(rounds: {', '.join(f'{t:.2f}' for t in times)})"
            )

            outputs = sorted((Path(tmp) / "out" / "resume").glob("*.mp4"))
            gone = outputs[::10]
            for path in gone:
                path.unlink()
            t0 = time.perf_counter()
            healed = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=fast)
            print(
                f"resume after deleting {len(gone)} outputs: {time.perf_counter() - t0:.2f} s, "
                f"complete={healed.complete}"
            )
            ledger = emu.ledger()
            assert set(ledger["submissions_by_input"].values()) == {1}
            print(f"ledger: {len(ledger['jobs'])} jobs created, each input once")


if __name__ == "__main__":
    main()
