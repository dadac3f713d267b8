"""The submit gate opens when a download ends, not when it starts: a full disk pays no more jobs.

While a finished job's outputs are being written, nothing new is submitted; when the disk refuses
them, the run stops before another job is paid. Against a 1 MiB tmpfs (root) or an injected
ENOSPC, as in ``test_disk_faults.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.retry import RetryPolicy
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .test_disk_faults import Disk

# Long enough for a submit the gate let through to show; it is waited out only when none comes.
SUBMIT_DEADLINE = 3.0


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    disk = Disk(tmp_path / "results", monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


@pytest.mark.parametrize("downloads", [1, 4])
def test_no_job_is_billed_while_a_download_the_disk_refuses_is_in_progress(
    tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch, downloads: int
) -> None:
    submits: list[dict[str, Any]] = []
    downloading: list[anyio.Event] = []
    during_download: list[int] = []
    real_submit, real_download = ModelApiClient.submit, ModelApiClient.download

    async def submit(self: ModelApiClient, model_id: str, inputs: dict[str, Any]) -> Any:
        submits.append(inputs)
        for event in downloading:
            event.set()
        return await real_submit(self, model_id, inputs)

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        # Hold the download open until a submit comes (the bug) or clearly will not (the fix).
        before, submitted = len(submits), anyio.Event()
        downloading.append(submitted)
        with anyio.move_on_after(SUBMIT_DEADLINE):
            await submitted.wait()
        during_download.append(len(submits) - before)
        return await real_download(self, url, dest)

    monkeypatch.setattr(ModelApiClient, "submit", submit)
    monkeypatch.setattr(ModelApiClient, "download", download)
    spec = write_spec(tmp_path)
    store = tmp_path / "store.db"
    (disk.root / "grid" / ".partial").mkdir(parents=True)
    disk.fill()
    with Emulator(EmulatorConfig(speed=200.0, workers=1)) as emu:
        report = run_sweep(
            spec,
            base_url=emu.base_url,
            token=emu.token,
            store=store,
            overrides=Overrides(concurrency=1, downloads=downloads, poll_interval=0.02),
            retry=RetryPolicy(wait=False),
        )
        billed = emu.ledger()["jobs"]
    assert report.fatal, report
    assert "stopped submitting" in (report.stop_reason or "")
    assert during_download == [0]  # the one download of the run; no submit while it lasted
    assert len(billed) == 1  # the job in flight when its download was refused, and no other
    with Store.open(store, readonly=True) as db:
        waiting = list(db.jobs([JobState.SUCCEEDED]))
        counts = db.counts()
    assert [row.request_id for row in waiting] == [billed[0]["request_id"]]
    assert counts["pending"] == 3
