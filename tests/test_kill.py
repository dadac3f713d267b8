"""SIGKILL the runner at its most dangerous moments, run again: nothing paid twice or lost."""

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
from orchestrator.runner import RunReport
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, cancel_sweep, run_sweep, sweep_status

from .sweeps import SPEC, run_until_killed, write_spec
from .waiting import PATIENCE, DrivenClock, wait_for

DRIVER = Path(__file__).with_name("kill_driver.py")
pytestmark = pytest.mark.timeout(300)  # runs in subprocesses: slow on a busy machine


@pytest.fixture
def clock() -> DrivenClock:
    return DrivenClock()


@pytest.fixture
def emulator(clock: DrivenClock) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=500.0, workers=4, clock=clock)) as emu:
        yield emu


def killed_run(spec: Path, emu: Emulator, point: str, after: int = 1) -> None:
    run_until_killed(DRIVER, spec, emu, point, str(after))


def resume(spec: Path, emu: Emulator) -> RunReport:
    return run_sweep(
        spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(poll_interval=0.02)
    )


@pytest.mark.parametrize(("point", "after"), [("submit-sent", 1), ("submit-sent", 3)])
def test_kill_before_the_request_id_is_stored(
    tmp_path: Path, emulator: Emulator, point: str, after: int
) -> None:
    spec = write_spec(tmp_path)
    killed_run(spec, emulator, point, after)
    report = resume(spec, emulator)
    # Every submit in flight when the process died is unknown, not resubmitted: at most paid once.
    assert report.counts["unknown"] >= 1
    assert report.counts["done"] + report.counts["unknown"] == 4
    ledger = emulator.ledger()
    assert set(ledger["submissions_by_input"].values()) == {1}
    assert len(ledger["jobs"]) >= report.counts["done"] + 1


@pytest.mark.parametrize(
    ("point", "after"),
    [
        ("polling", 1),
        ("polling", 5),
        ("downloading", 1),
        ("downloading", 3),
        ("waiting-result", 1),  # killed while a result waits for a store another program holds
        ("waiting-download", 1),  # killed while a landed output waits for it
    ],
)
def test_kill_mid_poll_or_download_loses_nothing(
    tmp_path: Path, emulator: Emulator, clock: DrivenClock, point: str, after: int
) -> None:
    spec = write_spec(tmp_path)
    if point == "polling":
        clock.freeze()  # no job ends before the AFTER-th poll, however slow the runner is
    killed_run(spec, emulator, point, after)
    clock.release()
    report = resume(spec, emulator)
    assert report.complete, report
    ledger = emulator.ledger()
    assert len(ledger["jobs"]) == 4
    assert set(ledger["submissions_by_input"].values()) == {1}
    folder = tmp_path / "results" / "grid"
    assert not list((folder / ".partial").iterdir())
    entries = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        for entry in entries:
            (output,) = entry["outputs"]
            assert (folder / output["path"]).stat().st_size == output["size"]
            assert db.get(entry["key"]).state == "done"


def test_kill_while_the_store_is_locked_and_the_id_is_only_in_the_journal(
    tmp_path: Path, emulator: Emulator
) -> None:
    spec = write_spec(tmp_path, body=SPEC.replace("concurrency: 3", "concurrency: 1"))
    killed_run(spec, emulator, "journaled")
    folder = tmp_path / "results" / "grid"
    journal = folder / "comfysweep.db.requests"
    (entry,) = [json.loads(line) for line in journal.read_text().splitlines()]
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        row = db.get(entry["key"])
        assert row is not None
        assert (row.state, row.request_id) == (JobState.SUBMITTING, None)  # only the journal knows
    report = resume(spec, emulator)
    assert report.complete, report  # replayed, tracked and downloaded; the rest submitted once
    ledger = emulator.ledger()
    assert len(ledger["jobs"]) == 4
    assert set(ledger["submissions_by_input"].values()) == {1}
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        row = db.get(entry["key"])
        assert row is not None
        assert (row.state, row.request_id) == (JobState.DONE, entry["request_id"])
    assert not journal.exists()


def test_cancel_after_a_killed_run_cancels_only_queued_jobs(tmp_path: Path) -> None:
    # Time stands still: the one job the worker took stays running, the others stay queued.
    with Emulator(EmulatorConfig(speed=1.0, workers=1, clock=DrivenClock(frozen=True))) as emu:
        spec = write_spec(tmp_path)
        killed_run(spec, emu, "polling", 3)
        report = cancel_sweep(spec, base_url=emu.base_url, token=emu.token)
        assert report.failed == []
        assert report.not_cancellable == 1  # the one job the single worker is rendering
        assert report.cancelled == 2
        counts = sweep_status(spec)["counts"]
        assert counts["cancelled"] == 2
        ledger = {job["request_id"]: job["status"] for job in emu.ledger()["jobs"]}
        assert sorted(ledger.values()).count("cancelled") == 2


def test_ctrl_c_with_abort_cancels_queued_jobs_and_finishes_the_running_one(
    tmp_path: Path,
) -> None:
    # One worker and time standing still: one job runs while two wait in the queue, until the
    # test moves the clock on once the two queued ones are cancelled.
    clock = DrivenClock(frozen=True)
    with Emulator(EmulatorConfig(speed=1.0, workers=1, clock=clock)) as emu:
        spec = write_spec(tmp_path)
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emu.base_url,
            "RUNCOMFY_API_TOKEN": emu.token,
        }
        command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--abort"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: len(emu.ledger()["jobs"]) == 3, "three jobs submitted", proc=proc)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: _statuses(emu).count("cancelled") == 2, "two jobs cancelled", proc=proc)
        clock.advance(600.0)  # the running job (84 simulated seconds) ends; its output is fresh
        out, err = proc.communicate(timeout=PATIENCE)
        ledger = emu.ledger()
    assert proc.returncode == 3, err
    assert b"cannot be cancelled and will be billed" in err
    statuses = sorted(job["status"] for job in ledger["jobs"])
    assert statuses == ["cancelled", "cancelled", "succeeded"]
    counts = sweep_status(spec)["counts"]
    assert (counts["done"], counts["cancelled"], counts["pending"]) == (1, 2, 1)
    assert b"1 done" in out


def _statuses(emu: Emulator) -> list[str]:
    return [job["status"] for job in emu.ledger()["jobs"]]
