"""Every fault the emulator injects ends a real run in its designed state with downloads verified:
each output on disk is whole and of the asked shape, and manifest.jsonl, metadata.jsonl and the
folder list the same files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.emulator import FAULTS, Emulator, EmulatorConfig, FaultProfile
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep
from orchestrator.verify import Shape, verify_output

from .sweeps import write_spec

JOBS = 4
DESIGNED = {
    "fail_string": {"failed": JOBS},
    "fail_object": {"failed": JOBS},
    "fail_list": {"failed": JOBS},
    "early_expiry": {"expired": JOBS},
    "drop_after_create": {"done": JOBS - 2, "unknown": 2},  # an unknown outcome is never resent
}


def profile(name: str) -> FaultProfile:
    fault: dict[str, Any] = {"rate": 1.0}
    if FAULTS[name].scope != "job":
        fault["limit"] = 2
    if name == "slow":
        fault["delay"] = 0.2
    if name == "truncated_download":
        fault["content_length"] = 0  # the cut only verification can see
    return FaultProfile.parse({"faults": {name: fault}})


# A refused input stops the run when it is the first answer (by design): how many jobs were out by
# then is a race, so refuse_input has its own tests (tests/test_failures.py).
@pytest.mark.parametrize("name", sorted(set(FAULTS) - {"refuse_input"}))
def test_every_fault_ends_in_its_designed_state_with_verified_outputs(
    tmp_path: Path, name: str
) -> None:
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=5000.0, workers=4, faults=profile(name))) as emu:
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            overrides=Overrides(poll_interval=0.02),
            retry=RetryPolicy(wait=False),
        )
        paid = len(emu.ledger()["jobs"])
    assert {k: v for k, v in report.counts.items() if v} == DESIGNED.get(name, {"done": JOBS})
    assert paid == JOBS
    folder = tmp_path / "results" / "grid"
    entries = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == JOBS
    listed = {o["path"]: o for e in entries for o in e["outputs"]}
    for path, output in listed.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == output["sha256"]
        verify_output(folder / path, "mp4", Shape(480, 480, 81))
    metadata = (folder / "metadata.jsonl").read_text().splitlines()
    assert {json.loads(line)["file_name"] for line in metadata} == set(listed)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*.mp4")} == set(listed)
    assert list((folder / ".partial").iterdir()) == []
