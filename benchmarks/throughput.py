"""Jobs/s, client CPU per job, time to 1,000 in flight and peak RSS: comfysweep vs bare loops.

    python benchmarks/throughput.py [--jobs 1000] [--concurrency 64] [--rounds 3]
                                    [--inflight 1000] [--sides comfysweep,httpx,aiohttp]

Three clients do the same requests per job against one emulator in its own process: a real
`comfysweep run` (the CLI entry point, in a child process), a bare httpx loop and a bare aiohttp
loop (submit, status until done, result, download the output to a file). Each client is a child
process of its own, timed from after its imports: wall time, user+system CPU
(resource.getrusage) and peak RSS. Rounds alternate the three sides; medians are reported.

1. Throughput: --jobs jobs at --concurrency against an emulator at its fastest (speed 1e9: a job
   is done when first looked at), after one unmeasured pass of the aiohttp loop over the same
   jobs: the emulator encodes each job's video at its first download, and that (not the client)
   would bound the first round to ~16 jobs/s on 2 cores.
2. In flight: --inflight jobs at concurrency --inflight against a second emulator at speed 1
   (a job lasts over 30 s), until the emulator has answered --inflight submits; the time from
   the client's start to then, and the client's peak RSS at that point (it is killed there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchkit

MODEL = "community/wan-2-2/vace-fun"
SPEC = """\
name: throughput
model: {model}
inputs:
  prompt: "A lighthouse at dusk, waves breaking"
  image: https://example.com/lighthouse.png
  resolution: 480x480 (1:1)
  frames: 81
  seed: 7
axes:
  steps: {{start: 2, stop: {last_step}, step: 1}}
  cfg: {cfgs}
run:
  concurrency: {concurrency}
  downloads: 8
  poll_interval: {poll}
  rate: 1000000
  output: {output}
"""
# httpx+aiohttp: the httpx loop over orchestrator/transport.py, comfysweep's default transport.
SIDES = ("comfysweep", "httpx", "httpx+aiohttp", "aiohttp")


def write_spec(folder: Path, jobs: int, concurrency: int, poll: float) -> Path:
    steps = 20 if jobs % 20 == 0 else 1
    cfgs = [round(0.1 * (n + 1), 1) for n in range(jobs // steps)]
    path = folder / "throughput.yaml"
    path.write_text(
        SPEC.format(
            model=MODEL,
            last_step=1 + steps,
            cfgs=cfgs,
            concurrency=concurrency,
            poll=poll,
            output=folder / "results",
        )
    )
    return path


def api_inputs(spec: Path) -> list[dict[str, Any]]:
    """The request bodies comfysweep sends, so the loops post the same ones."""
    from orchestrator.grid import iter_jobs
    from orchestrator.spec import load_spec

    return [dict(job.inputs) for job in iter_jobs(load_spec(spec))]


def _finished(word: str) -> bool:
    return word in ("completed", "succeeded", "failed", "cancelled")


async def httpx_loop(
    base: str,
    bodies: list[dict[str, Any]],
    conc: int,
    poll: float,
    out: Path,
    *,
    aio: bool = False,
    pool: int | None = None,
):
    """The httpx loop, a pool of ``pool`` connections (``conc``: one a job); ``aio``: httpx's API
    over comfysweep's aiohttp transport (its default)."""
    import httpx

    slots = asyncio.Semaphore(conc)
    headers = {"Authorization": f"Bearer {benchkit.TOKEN}"}
    pool = pool or conc
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    transport: httpx.AsyncBaseTransport | None = None
    if aio:
        from orchestrator.transport import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(
        headers=headers, timeout=120.0, limits=limits, transport=transport
    ) as http:

        async def one(n: int, body: dict[str, Any]) -> None:
            async with slots:
                rid = (await http.post(f"{base}/models/{MODEL}", json=body)).json()["request_id"]
                while True:
                    status = (await http.get(f"{base}/requests/{rid}/status")).json()
                    if _finished(status["status"]):
                        break
                    await asyncio.sleep(poll)
                result = (await http.get(f"{base}/requests/{rid}/result")).json()
                url = next(iter(result["output"].values()))
                (out / f"{n}.mp4").write_bytes((await http.get(url)).content)

        await asyncio.gather(*(one(n, body) for n, body in enumerate(bodies)))


async def aiohttp_loop(
    base: str,
    bodies: list[dict[str, Any]],
    conc: int,
    poll: float,
    out: Path,
    *,
    pool: int | None = None,
):
    import aiohttp

    slots = asyncio.Semaphore(conc)
    headers = {"Authorization": f"Bearer {benchkit.TOKEN}"}
    connector = aiohttp.TCPConnector(limit=pool or conc)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as http:

        async def get_json(url: str) -> Any:
            async with http.get(url) as answer:
                return await answer.json()

        async def one(n: int, body: dict[str, Any]) -> None:
            async with slots:
                async with http.post(f"{base}/models/{MODEL}", json=body) as answer:
                    rid = (await answer.json())["request_id"]
                while True:
                    status = await get_json(f"{base}/requests/{rid}/status")
                    if _finished(status["status"]):
                        break
                    await asyncio.sleep(poll)
                result = await get_json(f"{base}/requests/{rid}/result")
                url = next(iter(result["output"].values()))
                async with http.get(url) as answer:
                    (out / f"{n}.mp4").write_bytes(await answer.read())

        await asyncio.gather(*(one(n, body) for n, body in enumerate(bodies)))


def child(side: str, base: str, spec: Path, conc: int, poll: float) -> None:
    """One client, timed from after its imports; prints a JSON line of its own costs.

    ``side``: ``comfysweep`` (``comfysweep:T``: `run --http-transport T`), or a loop: ``httpx``,
    ``httpx+aiohttp`` (httpx over orchestrator/transport.py) or ``aiohttp``, ``:N`` a pool of N
    connections (one a job by default)."""
    os.environ["RUNCOMFY_MODEL_API_BASE"] = base
    os.environ["RUNCOMFY_API_TOKEN"] = benchkit.TOKEN
    os.environ["COMFYSWEEP_HOME"] = str(spec.parent / "home")  # cold: no duration remembered
    os.environ.pop("COMFYSWEEP_HTTP_TRANSPORT", None)
    kind, _, how = side.partition(":")
    if kind == "comfysweep":
        import logging

        from orchestrator.cli import cli

        run = ["run", str(spec), "--yes", *(["--http-transport", how] if how else [])]

        def go() -> None:
            logging.disable(logging.INFO)  # no per-job lines on the terminal, as with the loops
            cli.main(run, standalone_mode=False)
    else:
        import aiohttp  # noqa: F401  (imports outside the timing, as for comfysweep)
        import httpx  # noqa: F401

        import orchestrator.transport  # noqa: F401

        bodies = api_inputs(spec)
        out = spec.parent / "results"
        out.mkdir(exist_ok=True)
        pool = int(how) if how else None

        def go() -> None:
            if kind == "aiohttp":
                asyncio.run(aiohttp_loop(base, bodies, conc, poll, out, pool=pool))
            else:
                aio = kind == "httpx+aiohttp"
                asyncio.run(httpx_loop(base, bodies, conc, poll, out, aio=aio, pool=pool))

    timed(go)


def timed(go: Callable[[], None]) -> None:
    """Run a child's ``go`` after START; print its wall time, CPU (getrusage) and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    print("START", flush=True)
    began = time.perf_counter()
    go()
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": after.ru_maxrss / 1024}))


def _spawn(
    side: str, base: str, spec: Path, conc: int, poll: float, script: str
) -> subprocess.Popen[str]:
    argv = [sys.executable, script, "--child", side, base, str(spec), str(conc), str(poll)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "START":
        raise SystemExit(f"{side}: the client did not start")
    return proc


def throughput_round(
    side: str, base: str, jobs: int, conc: int, script: str = __file__
) -> dict[str, float]:
    """One client (``script --child side``) doing ``jobs`` at ``conc``: its costs, requests/job."""
    with tempfile.TemporaryDirectory(prefix="comfysweep-throughput-") as tmp:
        spec = write_spec(Path(tmp), jobs, conc, 0.01)
        before = sum(benchkit.served(base).values())
        proc = _spawn(side, base, spec, conc, 0.01, script)
        out, _ = proc.communicate(timeout=3600)
        requests = sum(benchkit.served(base).values()) - before
        if proc.returncode:
            raise SystemExit(f"{side}: exit {proc.returncode}")
        done = len(list((Path(tmp) / "results").rglob("*.mp4")))
        if done != jobs:
            raise SystemExit(f"{side}: {done} of {jobs} outputs on disk")
        figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures | {"requests_job": requests / jobs}


def inflight_round(side: str, base: str, jobs: int, script: str = __file__) -> dict[str, float]:
    """Start a client of ``jobs`` at that concurrency; the time until the emulator has answered
    ``jobs`` submits; then kill it and read its peak RSS."""
    with tempfile.TemporaryDirectory(prefix="comfysweep-inflight-") as tmp:
        spec = write_spec(Path(tmp), jobs, jobs, 2.0)
        before = benchkit.served(base).get("submit", 0)
        proc = _spawn(side, base, spec, jobs, 2.0, script)
        began = time.perf_counter()
        while benchkit.served(base).get("submit", 0) - before < jobs:
            if proc.poll() is not None or time.perf_counter() - began > 1800:
                raise SystemExit(f"{side}: stopped before {jobs} jobs were in flight")
            time.sleep(0.02)
        took = time.perf_counter() - began
        proc.send_signal(signal.SIGKILL)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -9
    return {"inflight_s": took, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=1000, help="jobs to have in flight")
    parser.add_argument("--inflight-rounds", type=int, default=1)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, base, spec, conc, poll = args.child
        child(side, base, Path(spec), int(conc), float(poll))
        return
    sides = args.sides.split(",")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    flights: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    with benchkit.emulator(speed=1e9) as fast:
        # The emulator encodes each job's video at its first download (~0.06 s of its CPU, so
        # ~16 jobs/s at most): a pass of the fastest loop first, so no round pays for encoding.
        throughput_round("aiohttp", fast, args.jobs, args.concurrency)
        for n in range(args.rounds):
            for side in sides:
                got = throughput_round(side, fast, args.jobs, args.concurrency)
                runs[side].append(got)
                rate = args.jobs / got["wall_s"]
                per_job = got["cpu_s"] / args.jobs * 1000
                print(f"round {n + 1} {side:<13} {rate:7.1f} jobs/s  {per_job:6.2f} ms CPU/job")
    with benchkit.emulator(speed=1.0) as slow:
        for n in range(args.inflight_rounds):
            for side in sides:
                got = inflight_round(side, slow, args.inflight)
                flights[side].append(got)
                print(
                    f"in flight {n + 1} {side:<13} {args.inflight} in {got['inflight_s']:6.2f} s"
                    f"  peak RSS {got['peak_rss_mb']:6.1f} MB"
                )

    def med(table: dict[str, list[dict[str, float]]], side: str, key: str) -> float:
        return statistics.median(r[key] for r in table[side])

    rate = {s: args.jobs / med(runs, s, "wall_s") for s in sides}
    cpu = {s: med(runs, s, "cpu_s") / args.jobs * 1000 for s in sides}
    flight = {s: med(flights, s, "inflight_s") for s in sides}
    rss = {s: med(flights, s, "peak_rss_mb") for s in sides}
    asks = {s: med(runs, s, "requests_job") for s in sides}
    print(f"{args.jobs} jobs at concurrency {args.concurrency}, median of {args.rounds} rounds")
    print(f"{'side':<11} {'jobs/s':>8} {'CPU ms/job':>11} {'to in flight s':>15} {'RSS MB':>8}")
    for s in sides:
        print(f"{s:<11} {rate[s]:8.1f} {cpu[s]:11.2f} {flight[s]:15.2f} {rss[s]:8.1f}")
    print("requests/job: " + ", ".join(f"{s} {asks[s]:.2f}" for s in sides))
    figures = []
    if "comfysweep" in sides:
        figures = _figures(args, rate, cpu, flight, rss)
    benchkit.report(
        "throughput",
        figures,
        jobs=args.jobs,
        concurrency=args.concurrency,
        rounds=args.rounds,
        inflight=args.inflight,
        sides={
            s: {
                "jobs_s": rate[s],
                "cpu_ms_job": cpu[s],
                "inflight_s": flight[s],
                "peak_rss_mb": rss[s],
                "requests_job": asks[s],
            }
            for s in sides
        },
    )


def _figures(
    args: argparse.Namespace,
    rate: dict[str, float],
    cpu: dict[str, float],
    flight: dict[str, float],
    rss: dict[str, float],
) -> list[dict[str, Any]]:
    us, figures = "comfysweep", []
    bound = {"httpx": 0.67, "aiohttp": 0.5}
    for loop in ("httpx", "aiohttp"):
        if loop not in rate:
            continue
        figures.append(
            benchkit.figure(
                f"jobs/s, {args.jobs} jobs, concurrency {args.concurrency} (vs {loop} loop)",
                rate[us],
                "jobs/s",
                f">= {bound[loop]}x the {loop} loop",
                bound[loop] * rate[loop],
                rate[loop],
                f"{loop} loop",
                higher=True,
            )
        )
    # comfysweep speaks httpx over its aiohttp transport by default: the loop on the same
    # transport is the httpx loop over that transport.
    same = "httpx+aiohttp" if "httpx+aiohttp" in rate else None
    if same:
        figures.append(
            benchkit.figure(
                "client CPU per job",
                cpu[us],
                "ms",
                "<= 1.5x the loop on the same transport (httpx over aiohttp)",
                1.5 * cpu[same],
                cpu[same],
                "httpx+aiohttp loop",
            )
        )
        figures.append(
            benchkit.figure(
                f"time to have {args.inflight} jobs in flight",
                flight[us],
                "s",
                "<= 1.2x the loop on the same transport (httpx over aiohttp)",
                1.2 * flight[same],
                flight[same],
                "httpx+aiohttp loop",
            )
        )
        figures.append(
            benchkit.figure(
                f"peak RSS, {args.inflight} in flight",
                rss[us],
                "MB",
                "<= 1.5x the loop on the same transport (httpx over aiohttp)",
                1.5 * rss[same],
                rss[same],
                "httpx+aiohttp loop",
            )
        )
    return figures


if __name__ == "__main__":
    main()
