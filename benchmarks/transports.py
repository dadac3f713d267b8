"""The HTTP transports side by side: httpx's own (pool sizes), aiohttp behind httpx, bare aiohttp,
and a real `comfysweep run` on each transport it offers; HTTP/2 when the emulator speaks it.

    python benchmarks/transports.py [--jobs 1000] [--concurrency 64] [--rounds 3]
                                    [--inflight 1000] [--pools 10,64,200]

One emulator in its own process at its fastest (speed 1e9), after one unmeasured pass of the
aiohttp loop (the emulator encodes each job's video at its first download). Every side is a
child process of its own doing the same requests per job (throughput.py's loops: submit, status
until done, result, download), timed from after its imports: jobs/s, CPU ms/job (getrusage),
peak RSS; rounds alternate the sides, medians are reported. Then time to --inflight jobs in flight
(concurrency --inflight, an emulator at speed 1) per side. Sides:

- ``httpx:N``: httpx.AsyncClient on httpx's own transport (httpcore), a pool of N connections;
- ``httpx+aiohttp:N``: httpx.AsyncClient on orchestrator.transport.AiohttpTransport, pool N;
- ``aiohttp:N``: the bare aiohttp loop (the issue's reference);
- ``comfysweep:T``: `comfysweep run --http-transport T` (T: httpx or aiohttp).
"""

from __future__ import annotations

import argparse
import socket
import statistics
from pathlib import Path
from typing import Any

import benchkit
import throughput

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def throughput_round(side: str, base: str, jobs: int, conc: int) -> dict[str, float]:
    return throughput.throughput_round(side, base, jobs, conc, script=__file__)


def inflight_round(side: str, base: str, jobs: int) -> dict[str, float]:
    return throughput.inflight_round(side, base, jobs, script=__file__)


def speaks_h2(base: str) -> str:
    """What the emulator answers to an HTTP/2 (prior knowledge) preface: its first line."""
    origin = base.removesuffix("/v1").removeprefix("http://")
    host, port = origin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(H2_PREFACE)
        answer = sock.recv(4096)
    if answer[3:4] == b"\x04":  # an HTTP/2 SETTINGS frame
        return "h2"
    return answer.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "(closed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=1000, help="jobs to have in flight")
    parser.add_argument("--pools", default="10,64,200", help="httpx pool sizes")
    parser.add_argument("--sides", help="comma-separated sides (default: all)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, base, spec, conc, poll = args.child
        throughput.child(side, base, Path(spec), int(conc), float(poll))
        return
    conc = args.concurrency
    sides = [f"httpx:{n}" for n in args.pools.split(",")]
    sides += [f"httpx+aiohttp:{conc}", f"aiohttp:{conc}", "comfysweep:httpx", "comfysweep:aiohttp"]
    if args.sides:
        sides = args.sides.split(",")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    flights: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    with benchkit.emulator(speed=1e9) as fast:
        h2 = speaks_h2(fast)
        print(f"HTTP/2 preface answered with: {h2}")
        throughput_round(f"aiohttp:{conc}", fast, args.jobs, conc)  # the videos, encoded once
        for n in range(args.rounds):
            for side in sides:
                got = throughput_round(side, fast, args.jobs, conc)
                runs[side].append(got)
                rate, per_job = args.jobs / got["wall_s"], got["cpu_s"] / args.jobs * 1000
                print(f"round {n + 1} {side:<20} {rate:7.1f} jobs/s  {per_job:6.2f} ms CPU/job")
    n_in = args.inflight
    with benchkit.emulator(speed=1.0) as slow:
        for side in sides:
            # The aiohttp-based loops get a pool as wide as their concurrency; httpx:N keeps N.
            wide = side if side.startswith("httpx:") else side.replace(f":{conc}", f":{n_in}")
            got = inflight_round(wide, slow, n_in)
            flights[side].append(got)
            print(f"in flight {side:<20} {args.inflight} in {got['inflight_s']:6.2f} s")

    def med(table: dict[str, list[dict[str, float]]], side: str, key: str) -> float:
        return statistics.median(r[key] for r in table[side])

    table = {
        s: {
            "jobs_s": args.jobs / med(runs, s, "wall_s"),
            "cpu_ms_job": med(runs, s, "cpu_s") / args.jobs * 1000,
            "inflight_s": med(flights, s, "inflight_s"),
            "peak_rss_mb": med(flights, s, "peak_rss_mb"),
            "requests_job": med(runs, s, "requests_job"),
        }
        for s in sides
    }
    print(f"\n{args.jobs} jobs at concurrency {conc}, median of {args.rounds} rounds;")
    print(f"in flight: {n_in} jobs at concurrency {n_in}, one round (httpx:N with a pool of N,")
    print(f"the aiohttp-based loops with a pool of {n_in})")
    print(f"{'side':<20} {'jobs/s':>8} {'CPU ms/job':>11} {'to in flight s':>15} {'RSS MB':>8}")
    for s, t in table.items():
        print(
            f"{s:<20} {t['jobs_s']:8.1f} {t['cpu_ms_job']:11.2f} {t['inflight_s']:15.2f} "
            f"{t['peak_rss_mb']:8.1f}"
        )
    if h2 != "h2":
        print(
            f"HTTP/2: not measured. The emulator (uvicorn) answers an HTTP/2 preface with {h2!r}: "
            "it speaks HTTP/1.1 only, so no figure of httpx's http2=True against it would be real."
        )
    benchkit.report(
        "transports",
        _figures(table, conc),
        jobs=args.jobs,
        concurrency=conc,
        rounds=args.rounds,
        inflight=args.inflight,
        http2=h2,
        sides=table,
    )


def _figures(table: dict[str, dict[str, float]], conc: int) -> list[dict[str, Any]]:
    """comfysweep on the aiohttp transport against the loops (the issue's targets), and
    against comfysweep on httpx's transport, measured in the same run."""
    us, them = table.get("comfysweep:aiohttp"), table.get("comfysweep:httpx")
    loop, bare = table.get(f"httpx+aiohttp:{conc}"), table.get(f"aiohttp:{conc}")
    figures: list[dict[str, Any]] = []
    if us is None:
        return figures
    if them is not None:
        figures.append(
            benchkit.figure(
                "comfysweep jobs/s, aiohttp transport (vs httpx transport)",
                us["jobs_s"],
                "jobs/s",
                ">= 1x comfysweep on httpx's transport",
                them["jobs_s"],
                them["jobs_s"],
                "comfysweep on httpx",
                higher=True,
            )
        )
        figures.append(
            benchkit.figure(
                "comfysweep CPU per job, aiohttp transport (vs httpx transport)",
                us["cpu_ms_job"],
                "ms",
                "<= 1x comfysweep on httpx's transport",
                them["cpu_ms_job"],
                them["cpu_ms_job"],
                "comfysweep on httpx",
            )
        )
    if bare is not None:
        figures.append(
            benchkit.figure(
                "comfysweep jobs/s, aiohttp transport (vs bare aiohttp loop)",
                us["jobs_s"],
                "jobs/s",
                ">= 0.5x the aiohttp loop",
                0.5 * bare["jobs_s"],
                bare["jobs_s"],
                "aiohttp loop",
                higher=True,
            )
        )
    if loop is not None:
        figures.append(
            benchkit.figure(
                "comfysweep CPU per job, aiohttp transport (vs its httpx+aiohttp loop)",
                us["cpu_ms_job"],
                "ms",
                "<= 1.5x the loop on the same transport",
                1.5 * loop["cpu_ms_job"],
                loop["cpu_ms_job"],
                "httpx+aiohttp loop",
            )
        )
        figures.append(
            benchkit.figure(
                "time to all in flight, aiohttp transport (vs its httpx+aiohttp loop)",
                us["inflight_s"],
                "s",
                "<= 1.2x the loop on the same transport",
                1.2 * loop["inflight_s"],
                loop["inflight_s"],
                "httpx+aiohttp loop",
            )
        )
    return figures


if __name__ == "__main__":
    main()
