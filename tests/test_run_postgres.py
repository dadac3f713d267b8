"""Several runners sharing one PostgreSQL store: every job runs once, nothing is paid twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.sweep import Overrides, run_sweep, sweep_status

from .postgres import fresh_schema
from .sweeps import SPEC, write_spec

pytestmark = pytest.mark.postgres


@pytest.fixture
def store_url() -> Iterator[str]:
    with fresh_schema("r") as url:
        yield url


def test_three_runners_share_one_sweep(tmp_path: Path, store_url: str) -> None:
    body = SPEC.replace("steps: [4, 8]", "steps: [4, 6, 8, 10, 12, 14]")  # 12 jobs
    spec = write_spec(tmp_path, body=body)
    reports: list[Any] = []
    errors: list[BaseException] = []
    with Emulator(EmulatorConfig(speed=500.0, workers=6)) as emu:

        def runner() -> None:
            try:
                reports.append(
                    run_sweep(
                        spec,
                        store=store_url,
                        base_url=emu.base_url,
                        token=emu.token,
                        overrides=Overrides(concurrency=2, poll_interval=0.02),
                    )
                )
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=runner) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        ledger = emu.ledger()
    assert errors == []
    assert len(reports) == 3
    assert sweep_status(spec, store=store_url)["counts"]["done"] == 12
    assert len(ledger["jobs"]) == 12
    assert set(ledger["submissions_by_input"].values()) == {1}
    folder = tmp_path / "results" / "grid"
    assert len(list(folder.glob("*.mp4"))) == 12
    assert list((folder / ".partial").iterdir()) == []
