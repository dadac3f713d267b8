"""A run where no job changes state for `run.stall_after` says so, in the display and the log."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.runner import Runner, RunReport
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .waiting import DrivenClock, wait_for

STALL = (
    "stalled: no job has changed state for 0.05 s (1 on the remote side, 0 downloading); "
    "still waiting"
)
AGAIN = STALL.replace("0.05 s", "0.2 s")


def test_a_stall_is_said_in_the_log_and_notified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notified: list[tuple[str, str]] = []
    monkeypatch.setattr(Runner, "_notify", lambda self, event, text: notified.append((event, text)))
    spec = write_spec(tmp_path)
    log = tmp_path / "results" / "grid" / "run.log"
    clock = DrivenClock(frozen=True)  # every job stays where it is until released
    reports: list[RunReport] = []
    with Emulator(EmulatorConfig(speed=2000.0, workers=2, clock=clock)) as emu:
        overrides = Overrides(concurrency=1, poll_interval=0.01, stall_after=0.05)

        def run() -> Any:
            reports.append(
                run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=overrides)
            )

        worker = threading.Thread(target=run)
        worker.start()
        try:
            wait_for(lambda: log.exists() and STALL in log.read_text(), "the stall line in run.log")
            wait_for(lambda: AGAIN in log.read_text(), "the stall said again at 4x")
        finally:
            clock.release()
            worker.join()
    (report,) = reports
    assert report.complete, report
    assert report.messages[:2] == [STALL, AGAIN]  # once, then again at 4x: not every tick
    assert notified[:2] == [("stall", STALL), ("stall", AGAIN)]


def test_progress_says_nothing_about_stalls(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=2000.0, workers=4)) as emu:
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token)
    assert report.complete
    assert not [m for m in report.messages if m.startswith("stalled")]


def test_the_emulator_scales_stall_after_by_its_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    real_init = Runner.__init__

    def init(self: Runner, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        seen.append(self.options.stall_after)

    monkeypatch.setattr(Runner, "__init__", init)
    spec = write_spec(tmp_path)
    config = EmulatorConfig(speed=2000.0, workers=4)
    assert run_sweep(spec, emulator=config, overrides=Overrides(stall_after=600.0)).complete
    assert seen == [pytest.approx(600.0 / 2000)]


def test_a_long_download_is_no_stall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download under way is progress: the run says no stall while it waits for one."""
    import anyio

    from orchestrator.client import ModelApiClient

    ticks: list[float] = []
    downloading: list[bool] = []
    said: list[str] = []
    real_check = Runner._check_stall

    def check(self: Runner, now: float) -> None:
        ticks.append(now)
        before = len(self._messages)
        real_check(self, now)
        if downloading:
            said.extend(self._messages[before:])

    monkeypatch.setattr(Runner, "_check_stall", check)
    real_download = ModelApiClient.download

    async def slow_download(self: ModelApiClient, *args: Any, **kwargs: Any) -> Any:
        seen = len(ticks)  # a big file on a slow line: two stall checks pass meanwhile
        downloading.append(True)
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: len(ticks) >= seen + 2, "ticks"))
        downloading.clear()
        return await real_download(self, *args, **kwargs)

    monkeypatch.setattr(ModelApiClient, "download", slow_download)
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("seed: [1, 2]", "seed: [1]"))
    overrides = Overrides(concurrency=1, poll_interval=0.01, stall_after=0.001)
    with Emulator(EmulatorConfig(speed=2000.0, workers=2)) as emu:
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token, overrides=overrides)
    assert report.complete, report
    assert len(ticks) >= 2
    assert said == []


def test_a_write_waiting_for_a_busy_store_is_no_stall() -> None:
    """The store's wait is said on its own ("waiting for the store"); no stall line over it."""
    from orchestrator.runner import RunOptions

    runner = Runner.__new__(Runner)
    runner.options = RunOptions(stall_after=10.0)
    runner.on_event = None
    runner.progress = None
    runner._messages = []
    runner._remote, runner._download_backlog, runner._downloading = 1, 0, 0
    runner._last_change, runner._stall_level = 0.0, 1
    runner._store_waiting = 1
    runner._check_stall(100.0)
    assert runner._messages == []
    runner._store_waiting = 0  # the store takes writes again: quiet counts from then
    runner._check_stall(105.0)
    assert runner._messages == []
    runner._check_stall(111.0)
    assert runner._messages == [
        "stalled: no job has changed state for 10 s (1 on the remote side, 0 downloading); "
        "still waiting"
    ]
