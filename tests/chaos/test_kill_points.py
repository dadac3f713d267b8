"""SIGKILL right after a chosen step of the runner, run again: the books still balance."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

from ..sweeps import run_until_killed, write_spec

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]  # subprocesses: slow when busy
DRIVER = Path(__file__).with_name("die_after.py")


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        yield emu


def die_after(spec: Path, emu: Emulator, target: str, after: int = 1) -> None:
    run_until_killed(DRIVER, spec, emu, target, str(after))


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


def test_a_manifest_write_cut_by_a_kill_leaves_no_temporary_file(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path)
    run = {
        "base_url": emulator.base_url,
        "token": emulator.token,
        "overrides": Overrides(poll_interval=0.02),
        "retry": RetryPolicy(wait=False),
    }
    assert run_sweep(spec, **run).complete  # type: ignore[arg-type]
    folder = tmp_path / "results" / "grid"
    # What atomic_file leaves when a SIGKILL lands between mkstemp and the rename.
    gone = _dead_pid()
    host = socket.gethostname()
    leftovers = [
        folder / f".manifest.jsonl.{host}~{gone}~k1ll3d.tmp",
        folder / f".metadata.jsonl.{host}~{gone}~x9y8z7.tmp",
    ]
    kept = [
        folder / ".notes.tmp",  # not ours
        folder / f".manifest.jsonl.{host}~{os.getpid()}~l1v3.tmp",  # a live writer's
        folder / f".manifest.jsonl.elsewhere~{gone}~0th3r.tmp",  # another machine's
    ]
    for path in leftovers + kept:
        path.write_text('{"key": "half a li')
    assert run_sweep(spec, **run).complete  # type: ignore[arg-type]
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
