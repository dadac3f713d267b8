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
