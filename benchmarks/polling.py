"""Requests per finished job and wall time: comfysweep's adaptive polling vs the naive loop.

The same sweep runs on one embedded emulator, a fresh state for each side (every output is
rendered beforehand into a shared folder: the emulator encodes a real MP4 at a job's first
download, a cost no CDN has): once with ``comfysweep run`` (cold: no duration remembered), once
with the loop a user would write with httpx (submit under the same concurrency, status every
2 s, then result, then download). Job durations are realistic (``--job-seconds``, spread by
``--jitter`` per job, seeded), compressed ``--speed`` times; the poll interval (2 s) and the
rate limit (10 requests/s) are scaled by the same speed, as ``--emulator`` does. Requests are
counted by the emulator (``/_emulator/requests``). ``--rounds`` alternates the two sides and
shows the median round. Prints a table, then one JSON line.

    python benchmarks/polling.py --job-seconds 20 --jobs 64 --concurrency 16 --speed 10
    python benchmarks/polling.py --job-seconds 120 --jobs 64 --concurrency 16 --speed 20
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.emulator.app import EmulatorState
from orchestrator.emulator.farm import gpu_seconds
from orchestrator.grid import iter_jobs
from orchestrator.spec import load_spec
from orchestrator.sweep import run_sweep

MODEL = "community/wan-2-2/vace-fun"
POLL = 2.0  # the naive loop's status interval, and comfysweep's poll_interval (RunComfy's CLI)
RATE = 10.0  # comfysweep's default rate limit, requests a second
_OVERHEAD, _PIXEL_STEPS = 20.0, 3.5e6  # the emulator's duration model (farm.py)

SPEC = """\
name: polling
model: {model}
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: {frames}
  steps: {steps}
  fps: 16
axes:
  seed: {{count: {jobs}, from: 1}}
run:
  concurrency: {concurrency}
  poll_interval: {poll}
  rate: {rate}
  output: {output}
"""


def _shape(seconds: float) -> tuple[int, int]:
    """Frames and steps whose emulated duration is about ``seconds`` (31 s at the least)."""
    frames = 81
    steps = max(2, round((seconds - _OVERHEAD) * _PIXEL_STEPS / (480 * 480 * frames)))
    return frames, steps


def _spec(folder: Path, args: argparse.Namespace) -> Path:
    frames, steps = _shape(args.job_seconds)
    path = folder / "polling.yaml"
    path.write_text(
        SPEC.format(
            model=MODEL,
            frames=frames,
            steps=steps,
            jobs=args.jobs,
            concurrency=args.concurrency,
            poll=POLL / args.speed,
            rate=RATE * args.speed,
            output=folder / "results",
        )
    )
    return path


def _comfysweep(spec: Path, emu: Emulator) -> tuple[int, float]:
    started = time.monotonic()
    report = run_sweep(spec, base_url=emu.base_url, token=emu.token)
    return report.counts.get("done", 0), time.monotonic() - started


async def _naive_job(
    http: httpx.AsyncClient, base: str, inputs: dict[str, Any], poll: float, slots: anyio.Semaphore
) -> bool:
    async with slots:
        submitted = (await http.post(f"{base}/models/{MODEL}", json=inputs)).json()
        rid = submitted["request_id"]
        while True:
            await anyio.sleep(poll)
            status = (await http.get(f"{base}/requests/{rid}/status")).json()["status"]
            if status in ("completed", "succeeded", "failed", "cancelled"):
                break
        result = (await http.get(f"{base}/requests/{rid}/result")).json()
        url = (result.get("output") or {}).get("video")
        if url is None:
            return False
        return (await http.get(url)).status_code == 200


async def _naive_run(base: str, token: str, jobs: list[dict[str, Any]], args: Any) -> int:
    slots = anyio.Semaphore(args.concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    done: list[bool] = []
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=8)
    async with httpx.AsyncClient(headers=headers, timeout=60.0, limits=limits) as http:

        async def one(inputs: dict[str, Any]) -> None:
            done.append(await _naive_job(http, base, inputs, POLL / args.speed, slots))

        async with anyio.create_task_group() as group:
            for inputs in jobs:
                group.start_soon(one, inputs)
    return sum(done)


def _naive(spec: Path, emu: Emulator, args: argparse.Namespace) -> tuple[int, float]:
    jobs = [job.inputs for job in iter_jobs(load_spec(spec))]
    started = time.monotonic()
    finished = anyio.run(_naive_run, emu.base_url, emu.token, jobs, args)
    return finished, time.monotonic() - started


def _measure(emu: Emulator, config: EmulatorConfig, run: Any) -> dict[str, Any]:
    emu.reset(config)
    finished, wall = run()
    requests = emu.requests()
    total = sum(requests.values())
    return {
        "finished": finished,
        "wall_s": round(wall, 2),
        "requests": total,
        "requests_per_job": round(total / max(finished, 1), 2),
        "by_endpoint": requests,
    }


def _render(spec: Path, config: EmulatorConfig) -> None:
    """Render every output once, beforehand: the emulator encodes a real MP4 on a job's first
    download (0.1-0.2 s of CPU), a cost a CDN does not have and that compressed time magnifies."""
    state = EmulatorState(config)
    try:
        model = state.models[MODEL]
        for job in iter_jobs(load_spec(spec)):
            state.media.get(state.complete(model, dict(job.inputs)))
    finally:
        state.close()


def _median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median wall time, with every round's wall time beside it."""
    ordered = sorted(rounds, key=lambda r: r["wall_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["walls_s"] = [r["wall_s"] for r in rounds]
    middle["requests_per_job_all"] = [r["requests_per_job"] for r in rounds]
    return middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-seconds", type=float, default=20.0, help="a job's duration (s)")
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--speed", type=float, default=10.0, help="emulated time compression")
    parser.add_argument("--jitter", type=float, default=0.15, help="spread of durations, +-")
    parser.add_argument("--workers", type=int, default=None, help="GPUs (default: concurrency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="alternate rounds; medians shown")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the runner's per-job lines; the table says it all
    frames, steps = _shape(args.job_seconds)
    emulated = gpu_seconds({"25_value": frames, "47_value": steps, "4_valuex3_value": "480x480"})
    # The emulator's shortest job is 31 s: its clock runs faster by as much, so that a job
    # lasts job_seconds / speed, exactly what the polling intervals are scaled to.
    config = EmulatorConfig(
        workers=args.workers or args.concurrency,
        speed=args.speed * emulated / args.job_seconds,
        seed=args.seed,
        duration_jitter=args.jitter,
    )
    with tempfile.TemporaryDirectory(prefix="comfysweep-polling-") as tmp:
        folder = Path(tmp)
        os.environ["COMFYSWEEP_HOME"] = str(folder / "home")  # cold: nothing remembered
        spec = _spec(folder, args)
        config = replace(config, media_dir=folder / "media")
        _render(spec, config)
        naives, ourses = [], []
        with Emulator(config) as emu:
            for _ in range(args.rounds):
                shutil.rmtree(folder / "results", ignore_errors=True)
                shutil.rmtree(folder / "home", ignore_errors=True)
                naives.append(_measure(emu, config, lambda: _naive(spec, emu, args)))
                ourses.append(_measure(emu, config, lambda: _comfysweep(spec, emu)))
        naive, ours = _median(naives), _median(ourses)
    print(
        f"{args.jobs} jobs of ~{args.job_seconds:g} s (+-{args.jitter:.0%}), "
        f"concurrency {args.concurrency}, {config.workers} workers, "
        f"speed {args.speed:g}, median of {args.rounds} round(s)"
    )
    print(f"{'':12} {'finished':>8} {'requests':>8} {'req/job':>8} {'wall s':>8}")
    for name, side in (("naive", naive), ("comfysweep", ours)):
        print(
            f"{name:12} {side['finished']:>8} {side['requests']:>8} "
            f"{side['requests_per_job']:>8.2f} {side['wall_s']:>8.2f}"
        )
    requests_ratio = naive["requests_per_job"] / ours["requests_per_job"]
    wall_ratio = ours["wall_s"] / naive["wall_s"]
    print(f"requests: {requests_ratio:.2f}x fewer; wall: {wall_ratio:.3f}x the naive loop's")
    summary = {
        "job_seconds": args.job_seconds,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "speed": args.speed,
        "jitter": args.jitter,
        "rounds": args.rounds,
        "naive": naive,
        "comfysweep": ours,
        "requests_ratio": round(requests_ratio, 3),
        "wall_ratio": round(wall_ratio, 3) if math.isfinite(wall_ratio) else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
