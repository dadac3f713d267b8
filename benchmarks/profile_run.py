"""Where a full-speed `comfysweep run` spends its CPU: py-spy samples by module and function.

    python benchmarks/profile_run.py [--jobs 1000] [--concurrency 64] [--rate 200]

Runs `python -m orchestrator run` under `py-spy record` (on-CPU samples only, every thread)
against an emulator in its own process at its fastest, the throughput benchmark's sweep. Prints
two tables: the share of samples by the module of the innermost Python frame (self time: httpx,
httpcore, sqlalchemy, orchestrator.runner...), and the share of samples that pass through each
of the runner's own functions (inclusive time). Needs py-spy (pip install py-spy) and the right
to ptrace a child (it is the tracer's own child, so the default Yama setting allows it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import benchkit
from throughput import throughput_round, write_spec

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


# py-spy's frames of a thread that waits (its idle detection misses a few): not CPU.
IDLE = {("wait", "threading"), ("select", "selectors"), ("get", "queue"), ("_worker", "thread")}

ROOTS = ("orchestrator.__main__", "orchestrator.cli")  # every sample passes through them

# The headings: a sample counts for each one any of its frames falls under.
CATEGORIES = {
    "HTTP stack (httpx, httpcore, h11)": lambda mod, func: mod in ("httpx", "httpcore", "h11"),
    "store (SQLAlchemy, sqlite3, orchestrator.store)": lambda mod, func: (
        mod in ("sqlalchemy", "sqlmodel", "sqlite3") or mod.startswith("orchestrator.store")
    ),
    "manifest rewrites (ResultsFolder.write_manifest)": lambda mod, func: (
        func == ("ResultsFolder.write_manifest")
    ),
    "downloads (orchestrator.download)": lambda mod, func: mod == "orchestrator.download",
    "output checks (orchestrator.verify)": lambda mod, func: mod == "orchestrator.verify",
    "tenacity": lambda mod, func: mod == "tenacity",
    "logging": lambda mod, func: mod == "logging",
    "json": lambda mod, func: mod == "json",
    "imports (start-up)": lambda mod, func: "importlib" in mod,
}


def module(path: str) -> str:
    """A frame's file as a module-ish name: httpx, sqlalchemy, asyncio, orchestrator.runner.

    py-spy writes a file relative to the sys.path entry it is under (httpx/_models.py)."""
    path = path.replace("\\", "/")
    if "orchestrator/" in path:
        tail = path.split("orchestrator/", 1)[1].removesuffix(".py").replace("/", ".")
        return f"orchestrator.{tail}"
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/") and "/python3" in path:
        path = path.split("/python3", 1)[1].partition("/")[2]
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def summarise(raw: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    total, by_module, through, grouped = 0, Counter[str](), Counter[str](), Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [FRAME.match(f) for f in stack.split(";")]
        parsed = [(module(m["file"]), m["func"]) for m in frames if m]
        if not parsed or (parsed[-1][1].rsplit(".", 1)[-1], parsed[-1][0]) in IDLE:
            continue
        total += n
        by_module[parsed[-1][0]] += n
        for heading, test in CATEGORIES.items():
            if any(test(mod, func) for mod, func in parsed):
                grouped[heading] += n
        if parsed[-1][0] in ("asyncio", "selectors", "anyio"):
            grouped["event loop itself (innermost frame in asyncio, anyio)"] += n
        ours = {f"{m}.{f}" for m, f in parsed if m.startswith("orchestrator.") and m not in ROOTS}
        for key in ours:
            through[key] += n
    return total, by_module, through, grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=200, help="samples a second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    with (
        tempfile.TemporaryDirectory(prefix="comfysweep-profile-") as tmp,
        benchkit.emulator() as base,
    ):
        folder = Path(tmp)
        # Every video encoded first (the emulator's CPU, not the client's; see throughput.py).
        throughput_round("aiohttp", base, args.jobs, args.concurrency)
        spec = write_spec(folder, args.jobs, args.concurrency, 0.01)
        raw = folder / "samples.txt"
        env = os.environ | {
            "RUNCOMFY_MODEL_API_BASE": base,
            "RUNCOMFY_API_TOKEN": benchkit.TOKEN,
            "COMFYSWEEP_HOME": str(folder / "home"),
        }
        command = [spy, "record", "-f", "raw", "-o", str(raw), "-r", str(args.rate), "--"]
        command += [sys.executable, "-m", "orchestrator", "run", str(spec), "--yes"]
        subprocess.run(command, env=env, check=True, capture_output=True)
        total, by_module, through, grouped = summarise(raw)
    if not total:
        sys.exit("py-spy took no samples")
    print(f"{total} on-CPU samples of a {args.jobs}-job run at concurrency {args.concurrency}")
    print("by heading (a sample counts under each heading one of its frames falls under):")
    for name, n in grouped.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print("self time, by module of the innermost Python frame:")
    for name, n in by_module.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    print("inclusive time, through comfysweep's own functions:")
    for name, n in through.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    shares = {
        "by_heading": [[k, round(n / total, 4)] for k, n in grouped.most_common()],
        "self_by_module": [[k, round(n / total, 4)] for k, n in by_module.most_common(args.top)],
        "inclusive_by_function": [
            [k, round(n / total, 4)] for k, n in through.most_common(args.top)
        ],
    }
    benchkit.report("profile_run", [], samples=total, jobs=args.jobs, **shares)


if __name__ == "__main__":
    main()
