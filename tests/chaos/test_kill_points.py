"""SIGKILL right after a chosen step of the runner, run again: the books still balance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

from ..sweeps import write_spec

pytestmark = pytest.mark.chaos
DRIVER = Path(__file__).with_name("die_after.py")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def die_after(spec: Path, emu: Emulator, target: str, after: int = 1) -> None:
    env = {**os.environ, "RUNCOMFY_MODEL_API_BASE": emu.base_url, "RUNCOMFY_API_TOKEN": emu.token}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(spec), target, str(after)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("after", [1, 3])
def test_kill_after_an_output_is_renamed_into_place_leaves_no_orphan(
    tmp_path: Path, emulator: Emulator, after: int
) -> None:
    spec = write_spec(tmp_path)
    die_after(spec, emulator, "orchestrator.results:ResultsFolder.place", after)
    report = run_sweep(
        spec,
        base_url=emulator.base_url,
        token=emulator.token,
        overrides=Overrides(poll_interval=0.02),
        retry=RetryPolicy(wait=False),
    )
    assert report.complete, report
    folder = tmp_path / "results" / "grid"
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    listed = {o["path"] for e in entries for o in e["outputs"]}
    on_disk = {p.name for p in folder.glob("*.mp4")}
    assert on_disk == listed  # the file a killed run renamed into place is the job's: no orphan
    assert len(emulator.ledger()["jobs"]) == 4
