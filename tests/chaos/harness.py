"""The chaos suite's moving parts: an emulator subprocess, `comfysweep run` subprocesses, the books.

Everything runs as separate processes, as a user's machine would: the emulator (``comfysweep
emulator --state``) outlives every runner, and each runner is ``python -m orchestrator run``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

TOKEN = "chaos-Tk-7f3a9c1e5b2d8f4a6c0e"  # distinctive, so a leak is easy to grep for


@dataclass
class EmulatorProcess:
    """A `comfysweep emulator` subprocess and where to reach it."""

    proc: subprocess.Popen[str]
    base_url: str
    stderr: Path

    @property
    def origin(self) -> str:
        return self.base_url.removesuffix("/v1")

    def ledger(self) -> dict[str, Any]:
        response = httpx.get(f"{self.origin}/_emulator/ledger", timeout=30.0)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


@contextmanager
def emulator_process(
    folder: Path, faults: Mapping[str, Any], *, speed: float, workers: int, token: str = TOKEN
) -> Iterator[EmulatorProcess]:
    """Start `comfysweep emulator --port 0 --faults F --state S`; SIGTERM it at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    profile = folder / "faults.yaml"
    profile.write_text(yaml.safe_dump(dict(faults)))
    stderr = folder / "emulator.err"
    command = [
        *("comfysweep", "emulator", "--port", "0", "--speed", str(speed)),
        *("--workers", str(workers), "--balance", "100000", "--token", token),
        *("--faults", str(profile), "--state", str(folder / "journal.jsonl")),
    ]
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *command[1:]],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), stderr.read_text()
        yield EmulatorProcess(proc, base_url, stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run_env(base_url: str, token: str = TOKEN) -> dict[str, str]:
    env = {**os.environ, "RUNCOMFY_MODEL_API_BASE": base_url, "RUNCOMFY_API_TOKEN": token}
    env.pop("RUNCOMFY_TOKEN", None)
    return env


def start_run(
    spec: Path, env: Mapping[str, str], out: IO[str], *extra: str
) -> subprocess.Popen[str]:
    """`python -m orchestrator run SPEC` writing stdout and stderr to ``out``."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec), *extra],
        env=dict(env),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


@dataclass
class Figures:
    """What a chaos run did and what the books say afterwards."""

    kills: int = 0
    runs: int = 0
    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    faults_fired: dict[str, int] = field(default_factory=dict)
    unknown_by_cause: dict[str, int] = field(default_factory=dict)
    submits_cut_by_kills: int = 0
    in_flight_at_kills: int = 0  # jobs submitting, on the remote side or downloading, summed
    billed_jobs: int = 0
    billed_but_unknown: int = 0
    duplicates: int = 0
    lost: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        faults = sum(self.faults_fired.values())
        unknown = ", ".join(f"{n} {k}" for k, n in sorted(self.unknown_by_cause.items()))
        return (
            f"chaos: {self.kills} kills ({self.in_flight_at_kills} jobs in flight at them) over "
            f"{self.runs} runs, {self.jobs} jobs, "
            f"{faults} faults injected, unknown: {unknown or 'none'}; "
            f"duplicates {self.duplicates}, outputs lost {self.lost}, {self.seconds:.0f}s"
        )

    def faults_line(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.faults_fired.items()))
        return f"chaos faults: {kinds}; states: {self.states}; billed {self.billed_jobs} jobs"

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")


FIGURES_KEY = pytest.StashKey[Figures]()  # where the kill loop leaves its figures for the summary
