"""A full or read-only disk under the results folder: nothing paid is forgotten, nothing paid twice.

The outputs go to a tiny tmpfs (mounted here when the test runs as root; otherwise the error is
injected where the client opens the file), the store stays on the normal disk. A download that
cannot be written leaves its job ``succeeded`` (downloadable), the run stops submitting and says
why, and the next run, with room again, downloads it without paying again.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator.download
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec

ONE_AT_A_TIME = Overrides(concurrency=1, poll_interval=0.02)


def can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/self/mountinfo").exists()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    # Fast jobs; the order is the runner's gate, not timing: no submit while a download runs.
    with Emulator(EmulatorConfig(speed=200.0, workers=1)) as emu:
        yield emu


class Disk:
    """The results folder's disk: a 1 MiB tmpfs, or (without root) an injected error."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.mounted = False
        self.injected: int | None = None
        self.ro_mounts: list[Path] = []
        root.mkdir(parents=True)
        if can_mount():
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True
            )
            self.mounted = done.returncode == 0

    def fill(self) -> None:
        """Leave less room than one output (an 81-frame 480x480 video is ~30 KB)."""
        if not self.mounted:
            self._inject(errno.ENOSPC)
            return
        stat = os.statvfs(self.root)
        # Leave 12 KiB: the folder's small files fit, a video does not.
        (self.root / "ballast").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 12 * 1024))

    def read_only(self, folder: Path) -> None:
        """Make ``folder`` (inside the disk) a read-only file system of its own."""
        if not self.mounted:
            self._inject(errno.EROFS)
            return
        command = ["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)]
        subprocess.run(command, check=True)
        self.ro_mounts.append(folder)

    def heal(self) -> None:
        if self.injected is not None:
            self.monkeypatch.delattr(orchestrator.download, "open")
            self.injected = None
        for folder in self.ro_mounts:
            subprocess.run(["umount", str(folder)], check=True)
        self.ro_mounts.clear()
        (self.root / "ballast").unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            for folder in self.ro_mounts:
                subprocess.run(["umount", "-l", str(folder)], check=False)
            subprocess.run(["umount", "-l", str(self.root)], check=True)

    def _inject(self, code: int) -> None:
        """The client's file writes fail as the kernel would say."""
        self.injected = code

        def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if "w" in mode:
                raise OSError(code, os.strerror(code), str(file))
            return builtins.open(file, mode, *args, **kwargs)

        self.monkeypatch.setattr(orchestrator.download, "open", failing_open, raising=False)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    disk = Disk(tmp_path / "results", monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


def run(spec: Path, emu: Emulator, store: Path) -> Any:
    return run_sweep(
        spec,
        base_url=emu.base_url,
        token=emu.token,
        store=store,
        overrides=ONE_AT_A_TIME,
        retry=RetryPolicy(wait=False),
    )


def check_nothing_forgotten(report: Any, emu: Emulator, store: Path, reason: str) -> None:
    """The paid jobs wait, downloadable, for disk room; the run stopped before paying for more."""
    assert report.fatal
    assert reason in (report.stop_reason or ""), report
    assert "stopped submitting" in (report.stop_reason or "")
    paid = {job["request_id"] for job in emu.ledger()["jobs"]}
    # One job at a time, and no submit while its download runs: the refused download stopped the
    # run before a second job was paid.
    assert len(paid) == 1
    with Store.open(store, readonly=True) as db:
        counts = db.counts()
        waiting = list(db.jobs([JobState.SUCCEEDED]))
    assert {row.request_id for row in waiting} == paid
    assert all(reason in str(row.error) for row in waiting)
    assert counts["succeeded"] == len(paid)
    assert counts["pending"] == 4 - len(paid)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_download_the_disk_refuses_stops_the_run_and_is_fetched_later_without_paying(
    tmp_path: Path, emulator: Emulator, disk: Disk, fault: str
) -> None:
    spec = write_spec(tmp_path)
    store = tmp_path / "store.db"
    folder = disk.root / "grid"
    folder.mkdir()
    (folder / ".partial").mkdir()
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    if fault == "full":
        disk.fill()
    else:
        disk.read_only(folder / ".partial")  # where downloads are written first
    report = run(spec, emulator, store)
    check_nothing_forgotten(report, emulator, store, reason)

    disk.heal()
    report = run(spec, emulator, store)
    assert report.complete, report
    ledger = emulator.ledger()
    assert len(ledger["jobs"]) == 4  # the first job was not paid again
    assert set(ledger["submissions_by_input"].values()) == {1}
    assert len(list(folder.glob("*.mp4"))) == 4
    assert list((folder / ".partial").iterdir()) == []


def test_a_read_only_results_folder_is_one_line_and_pays_nothing(
    tmp_path: Path, emulator: Emulator
) -> None:
    if not can_mount():
        pytest.skip("needs root to mount a read-only tmpfs (root ignores file modes)")
    spec = write_spec(tmp_path)
    folder = tmp_path / "results" / "grid"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)], check=True)
    try:
        env = {
            **os.environ,
            "RUNCOMFY_MODEL_API_BASE": emulator.base_url,
            "RUNCOMFY_API_TOKEN": emulator.token,
        }
        command = [sys.executable, "-m", "orchestrator", "run", str(spec)]
        command += ["--store", str(tmp_path / "store.db")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    assert str(folder) in line
    assert "Read-only file system" in line
    assert emulator.ledger()["jobs"] == []
