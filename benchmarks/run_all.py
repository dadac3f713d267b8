"""Run every issue-12 benchmark and write benchmarks/results.md: the machine and each figure.

    python benchmarks/run_all.py [--quick] [--only throughput,plan_grid] [--out FILE]

Each benchmark runs in its own process (its output shown as it goes); its last line, one JSON
object, is collected. results.md gets the date, the machine (cores, CPU, RAM, Python, OS, load),
the table of figures against their targets (met, or missed by how many times), and the profile.
--quick runs smaller sizes (a minute or two); the full run takes about ten minutes. PostgreSQL
is measured when COMFYSWEEP_TEST_POSTGRES_URL is set (`.ci/postgres` prints one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# name: (full arguments, --quick arguments). The manifest run is 2,000 jobs, not the issue's
# 10,000: at today's ~17 jobs/s 10,000 take ten minutes alone (manifest_10k.py's default).
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "throughput": (
        ["--jobs", "1000", "--concurrency", "64", "--rounds", "3", "--inflight", "1000"],
        ["--jobs", "200", "--concurrency", "64", "--rounds", "1", "--inflight", "200"],
    ),
    "claim_scale": ([], ["--sizes", "1000,10000", "--claims", "20"]),
    "runners": (["--jobs", "1000"], ["--jobs", "200"]),
    "resume_100k": ([], ["--sizes", "1000,10000", "--rounds", "1"]),
    "status_100k": ([], ["--jobs", "10000", "--rounds", "3"]),
    "manifest_10k": (["--jobs", "2000"], ["--jobs", "400"]),
    "plan_grid": ([], ["--seeds", "100"]),
    "profile_run": (["--jobs", "1000"], ["--jobs", "200"]),
    "transports": (
        ["--jobs", "1000", "--concurrency", "64", "--rounds", "3", "--inflight", "1000"],
        ["--jobs", "200", "--concurrency", "64", "--rounds", "1", "--inflight", "200"],
    ),
    "store_path": (["--jobs", "2000", "--rounds", "3"], ["--jobs", "500", "--rounds", "1"]),
}


NOTES = [
    "- The loops make 4 requests a job (submit, status until done, result, download); comfysweep "
    "makes 3 (it polls the result endpoint). Each client is a process of its own, timed from "
    "after its imports; CPU is its getrusage user + system time.",
    "- The emulator encodes each job's video at its first download (~0.06 s of its CPU: ~16 "
    "jobs/s on 2 cores). throughput.py and profile_run.py first pass every job once with the "
    "aiohttp loop so no measured run pays it; manifest_10k.py does not, so its run goes at that "
    "pace; the manifest is appended to each tick (the lines of the jobs that moved) and written "
    "whole at the end, so its figure stays flat as the run grows (the issue's 10,000 jobs: "
    "`python benchmarks/manifest_10k.py`, about ten minutes).",
    "- claim_scale's stores are synced whole by Store.sync_jobs on both backends; claim_within "
    "is the runner's claim (pick, estimate, reservation under a cap and a concurrency).",
    '- `plan --json` has no target but "keep": it is compared with the issue\'s 0.73 s (+20%).',
    "- runners.py: SQLite's single runner, then 1, 2 and 4 `comfysweep run` processes on one "
    "PostgreSQL store, same spec, one emulator at its fastest, warmed; claims/s is the store's "
    "attempts over their span, jobs/s the jobs over the runners' wall time; lock waits are "
    "sampled from pg_locks every 2 ms (a lower bound: shorter waits go unseen).",
    "- The PostgreSQL of `.ci/postgres` runs with fsync=off (a throwaway test cluster): its "
    "commits skip the flush that SQLite's durable commits (`submitting`, `queued`) pay here.",
]


def machine() -> dict[str, str]:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    ram = first("/proc/meminfo", "MemTotal")
    if ram.endswith(" kB"):
        ram = f"{int(ram.split()[0]) / 2**20:.1f} GiB"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cores": str(os.cpu_count()),
        "CPU": first("/proc/cpuinfo", "model name"),
        "RAM": ram,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": platform.platform(),
        "load average at start": load,
        "PostgreSQL": "yes" if os.environ.get("COMFYSWEEP_TEST_POSTGRES_URL") else "not set",
    }


def run(name: str, args: list[str]) -> tuple[dict[str, Any] | None, float]:
    print(f"== {name} {' '.join(args)}", flush=True)
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / f"{name}.py"), *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.strip():
            last = line.strip()
    proc.wait()
    took = time.perf_counter() - began
    if proc.returncode or not last.startswith("{"):
        print(f"!! {name} failed (exit {proc.returncode})", flush=True)
        return None, took
    result: dict[str, Any] = json.loads(last)
    return result, took


def number(x: float | None, unit: str = "") -> str:
    if x is None:
        return ""
    text = f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return f"{text} {unit}".strip()


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| figure | measured | bare reference, same run | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results.values():
        for f in result.get("figures", []):
            ref = ""
            if f["reference"] is not None:
                ref = f"{f['reference_name']}: {number(f['reference'], f['unit'])}"
            ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}x"
            verdict = "met" if f["met"] else f"missed by {f['miss']:.2f}x"
            lines.append(
                f"| {f['figure']} | {number(f['value'], f['unit'])} | {ref} | {ratio} "
                f"| {f['target']} | {verdict} |"
            )
    return lines


def profile(result: dict[str, Any]) -> list[str]:
    lines = [
        f"py-spy, on-CPU samples only ({result['samples']} samples, {result['jobs']} jobs at "
        "concurrency 64, emulator fastest; `benchmarks/profile_run.py`).",
        "",
        "By heading (inclusive: a sample counts under every heading one of its frames is in,",
        "so shares overlap; tenacity wraps the HTTP calls and downloads beneath it):",
        "",
    ]
    lines += [f"- {share:.1%} {name}" for name, share in result["by_heading"]]
    lines += ["", "Self time, by the module of the innermost Python frame:", ""]
    lines += [f"- {share:.1%} {name}" for name, share in result["self_by_module"]]
    lines += ["", "Inclusive time through comfysweep's own functions:", ""]
    lines += [f"- {share:.1%} `{name}`" for name, share in result["inclusive_by_function"]]
    return lines


def runners_table(result: dict[str, Any] | None) -> list[str]:
    """runners.py's rows: one store, several `comfysweep run` processes."""
    if not result or "rows" not in result:
        return []
    lines = [
        f"Several runners ({result['jobs']} jobs, store-wide concurrency "
        f"{result['concurrency']}, emulator fastest; `benchmarks/runners.py`):",
        "",
        "| store x runners | claims/s | jobs/s | longest lock wait ms | median lock wait ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in result["rows"].items():
        longest = r.get("longest_wait_ms")
        median = r.get("median_wait_ms")
        lines.append(
            f"| {name} | {r['claims_s']:.1f} | {r['jobs_s']:.1f} "
            f"| {'' if longest is None else f'{longest:.2f}'} "
            f"| {'' if median is None else f'{median:.2f}'} |"
        )
    return [*lines, ""]


def transport_sides(result: dict[str, Any] | None) -> list[str]:
    """transports.py's sides: each HTTP transport under the same loop, and comfysweep on each."""
    if not result or "sides" not in result:
        return []
    lines = [
        f"HTTP transports ({result['jobs']} jobs, concurrency {result['concurrency']}, median of "
        f"{result['rounds']} rounds; `httpx:N` is httpx's own transport with a pool of N, "
        "`httpx+aiohttp` httpx.AsyncClient on orchestrator/transport.py; in flight: "
        f"{result['inflight']} jobs at that concurrency on an emulator at speed 1):",
        "",
        "| side | jobs/s | CPU ms/job | s to all in flight | peak RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for side, s in result["sides"].items():
        lines.append(
            f"| {side} | {s['jobs_s']:.1f} | {s['cpu_ms_job']:.2f} | {s['inflight_s']:.2f} "
            f"| {s['peak_rss_mb']:.0f} |"
        )
    if result.get("http2") != "h2":
        lines += [
            "",
            f"HTTP/2 is not measured: the emulator (uvicorn) answers an HTTP/2 preface with "
            f"`{result.get('http2')}`; it speaks HTTP/1.1 only.",
        ]
    return [*lines, ""]


def write(out: Path, quick: bool, info: dict[str, str], results: dict[str, Any], took: float):
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks: issue 12's figures",
        "",
        f"Written by `python benchmarks/run_all.py{' --quick' if quick else ''}` on {when} "
        f"({took / 60:.1f} min). Each figure's script is in `benchmarks/`; run it alone for "
        "its own table.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", "## Figures", "", *table(results), ""]
    extra = results.get("throughput")
    if extra and "sides" in extra:
        lines += [
            f"Throughput sides ({extra['jobs']} jobs, concurrency {extra['concurrency']}, median "
            f"of {extra['rounds']} rounds; in flight: {extra['inflight']} jobs at concurrency "
            f"{extra['inflight']} on an emulator at speed 1):",
            "",
            "| client | jobs/s | CPU ms/job | cores busy | s to all in flight | peak RSS MB "
            "| requests/job |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for side, s in extra["sides"].items():
            lines.append(
                f"| {side} | {s['jobs_s']:.1f} | {s['cpu_ms_job']:.2f} "
                f"| {s['jobs_s'] * s['cpu_ms_job'] / 1000:.2f} | {s['inflight_s']:.2f} "
                f"| {s['peak_rss_mb']:.0f} | {s.get('requests_job', 0):.2f} |"
            )
        lines.append("")
    lines += runners_table(results.get("runners"))
    lines += transport_sides(results.get("transports"))
    lines += ["## How to read them", "", *NOTES, ""]
    if "profile_run" in results:
        lines += ["## Where a full-speed run's CPU goes", "", *profile(results["profile_run"]), ""]
    missing = [name for name in BENCHMARKS if name not in results]
    if missing:
        lines += [f"Not measured this time (failed or skipped): {', '.join(missing)}.", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a minute or two")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    info = machine()
    began = time.perf_counter()
    results: dict[str, Any] = {}
    for name in names:
        full, quick = BENCHMARKS[name]
        result, took = run(name, quick if args.quick else full)
        print(f"== {name}: {took:.0f} s", flush=True)
        if result is not None:
            results[name] = result
    write(args.out, args.quick, info, results, time.perf_counter() - began)


if __name__ == "__main__":
    main()
