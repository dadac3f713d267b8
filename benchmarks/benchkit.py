"""What the issue-12 benchmarks share: an emulator in its own process, and the figure lines.

Each benchmark prints a human table and, as its last line, one JSON object
``{"benchmark": name, "figures": [figure, ...]}``; ``benchmarks/run_all.py`` reads those lines.
A figure says its value, the bare reference measured in the same run (if the table has one),
the ratio to it, the target in words and whether it is met.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

TOKEN = "bench-token"
MODEL = "community/wan-2-2/vace-fun"


@dataclass(frozen=True)
class Job:
    """A job as Store.sync_jobs takes it, without a spec behind it."""

    key: str
    index: int
    model_id: str = MODEL
    inputs: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0
    sources: dict[str, str] = field(default_factory=dict)


def jobs(n: int) -> Iterator[Job]:
    """``n`` distinct vace-fun jobs, keys in index order."""
    for i in range(n):
        yield Job(f"{i:064x}", i, inputs={"56_text": f"a fox, take {i}", "47_value": 8})


@contextlib.contextmanager
def emulator(speed: float = 1e9, workers: int = 1024) -> Iterator[str]:
    """`comfysweep emulator` in a process of its own (as the real API would be); its base URL."""
    command = [sys.executable, "-m", "orchestrator", "emulator", "--port", "0", "--token", TOKEN]
    command += ["--speed", str(speed), "--workers", str(workers), "--balance", "1e12"]
    # Its stderr is dropped: a client killed mid-request (as some benchmarks do) logs a traceback.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def served(base_url: str) -> dict[str, int]:
    """Requests the emulator has served, by endpoint (submit, status, result, download...)."""
    origin = base_url.removesuffix("/v1")
    answer: dict[str, int] = httpx.get(f"{origin}/_emulator/requests", timeout=30).json()
    return answer


def figure(
    name: str,
    value: float,
    unit: str,
    target: str,
    goal: float,
    reference: float | None = None,
    reference_name: str | None = None,
    *,
    higher: bool = False,
) -> dict[str, Any]:
    """One row of the issue's table: met when ``value`` <= ``goal`` (>= with ``higher``);
    ``ratio`` is value / reference when there is one, ``miss`` how many times off the goal."""
    ratio = round(value / reference, 3) if reference else None
    met = value >= goal if higher else value <= goal
    off = (goal / value if value else float("inf")) if higher else (value / goal if goal else 0)
    return {
        "figure": name,
        "value": round(value, 4),
        "unit": unit,
        "reference": None if reference is None else round(reference, 4),
        "reference_name": reference_name,
        "ratio": ratio,
        "target": target,
        "goal": round(goal, 4),
        "met": met,
        "miss": None if met else round(off, 2),
    }


def report(benchmark: str, figures: list[dict[str, Any]], **extra: Any) -> None:
    """Print the figures as a table, then the one JSON line run_all.py reads."""
    print(f"{'figure':<58} {'value':>10} {'reference':>10} {'ratio':>7}  target")
    for f in figures:
        ref = "" if f["reference"] is None else f"{f['reference']:g}"
        ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}"
        mark = "met" if f["met"] else "MISSED"
        print(f"{f['figure']:<58} {f['value']:>10g} {ref:>10} {ratio:>7}  {f['target']} ({mark})")
    print(json.dumps({"benchmark": benchmark, "figures": figures, **extra}))
