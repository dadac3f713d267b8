"""A second `comfysweep run` on a sweep another run holds refuses, naming the pid; status reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.store import Store

from ..sweeps import write_spec
from ..waiting import PATIENCE, DrivenClock, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]  # subprocesses: slow when busy


def comfysweep(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )


def test_second_run_refuses_naming_the_holder_while_status_reads(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    # The emulator's clock stands still: no job ends, so the first run holds the lock until killed.
    with Emulator(EmulatorConfig(speed=1.0, workers=1, clock=DrivenClock(frozen=True))) as emu:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        first = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(spec)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # concurrency 3: all three are submitted
            wait_for(lambda: len(emu.ledger()["jobs"]) == 3, "the first run submitting", proc=first)

            second = comfysweep("run", str(spec), env=env)
            assert second.returncode == 1
            (line,) = second.stderr.strip().splitlines()
            host = socket.gethostname()
            assert line.startswith("Error: ")
            assert f"held by pid {first.pid} on host {host}" in line
            assert "comfysweep run grid" in line
            assert len(emu.ledger()["jobs"]) == 3  # the refused run submitted nothing

            status = comfysweep("status", str(spec), "--json", env=env)
            assert status.returncode == 0, status.stderr
            counts = json.loads(status.stdout)["counts"]
            assert counts["queued"] + counts["running"] == 3
            assert counts["pending"] == 1
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    # The kernel dropped the lock with its holder: the next run may go on.
    with Store.open(tmp_path / "results" / "grid" / "comfysweep.db") as db, db.lock("next run"):
        assert db.counts()["pending"] == 1
