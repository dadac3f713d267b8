"""A store another program holds past the busy timeout: every per-job write waits, none is lost.

Another process takes the SQLite file with ``BEGIN EXCLUSIVE`` while jobs are polled and
downloaded, and lets it go only once the run says it waits for the store. The run holds new
submits meanwhile, records every write once the file is free, and ends with every job paid once
and every output on disk.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import runner as runner_module
from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import StoreBusyError, StoreError
from orchestrator.runner import Runner
from orchestrator.store import JobState, Store, schema
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec
from .waiting import wait_for

HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
db.close()
print("released", flush=True)
"""


class Holder:
    """Another process holding the SQLite file with BEGIN EXCLUSIVE until ``release()``."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "released\n"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=500.0, workers=4)) as emu:
        yield emu


def said(monkeypatch: pytest.MonkeyPatch, text: str) -> threading.Event:
    """An event set when the runner says a line containing ``text``."""
    seen = threading.Event()
    real = Runner._say

    def say(self: Runner, line: str) -> None:
        real(self, line)
        if text in line:
            seen.set()

    monkeypatch.setattr(Runner, "_say", say)
    return seen


def test_a_store_held_by_another_program_while_jobs_are_polled_and_downloaded_loses_nothing(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 50)  # each try gives up on the lock at once
    spec = write_spec(tmp_path)
    path = tmp_path / "results" / "grid" / "comfysweep.db"
    waiting = said(monkeypatch, "waiting for the store")
    holders: list[Holder] = []
    released: list[int] = []  # jobs the API had when the lock was taken, and when it went
    threads: list[threading.Thread] = []
    real_download = ModelApiClient.download

    def release_when_waited_on() -> None:
        waiting.wait(timeout=120)
        # The other job in flight has finished remotely too: its result waits for the store.
        wait_for(
            lambda: all(j["finished_at"] for j in emulator.ledger()["jobs"]),
            "every submitted job to finish remotely",
        )
        released.append(len(emulator.ledger()["jobs"]))
        holders[0].release()

    async def download(self: ModelApiClient, url: str, dest: Path) -> Any:
        got = await real_download(self, url, dest)
        if not holders:  # the output is fetched; recording it, and every poll, finds the lock
            holders.append(Holder(path))
            released.append(len(emulator.ledger()["jobs"]))
            thread = threading.Thread(target=release_when_waited_on)
            thread.start()
            threads.append(thread)
        return got

    monkeypatch.setattr(ModelApiClient, "download", download)
    try:
        report = run_sweep(
            spec,
            base_url=emulator.base_url,
            token=emulator.token,
            overrides=Overrides(concurrency=2, poll_interval=0.02),
        )
    finally:
        for thread in threads:
            thread.join()
        for holder in holders:
            holder.close()
    assert report.complete, report
    assert waiting.is_set()
    assert any("the store takes writes again" in m for m in report.messages)
    assert released[0] == released[1]  # nothing new was submitted while the store was held
    ledger = emulator.ledger()
    assert len(ledger["jobs"]) == 4
    assert set(ledger["submissions_by_input"].values()) == {1}
    with Store.open(path, readonly=True) as db:
        rows = list(db.jobs())
        assert all(row.state is JobState.DONE for row in rows)
        for row in rows:
            assert [e.to_state for e in db.events(row.key)].count(JobState.SUCCEEDED) == 1
            for output in row.outputs:
                assert (path.parent / output["path"]).is_file()


def test_a_store_busy_past_the_patience_stops_the_run_with_one_line(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(runner_module, "_STORE_PATIENCE", 0.5)
    spec = write_spec(tmp_path)
    path = tmp_path / "results" / "grid" / "comfysweep.db"
    holders: list[Holder] = []
    real_result = ModelApiClient.result

    async def result(self: ModelApiClient, request_id: str, include_cost: bool = True) -> Any:
        answer = await real_result(self, request_id, include_cost)
        if not holders:
            holders.append(Holder(path))
        return answer

    monkeypatch.setattr(ModelApiClient, "result", result)
    try:
        with pytest.raises(StoreBusyError) as caught:
            run_sweep(
                spec,
                base_url=emulator.base_url,
                token=emulator.token,
                overrides=Overrides(concurrency=1, poll_interval=0.02),
            )
    finally:
        for holder in holders:
            holder.close()
    message = str(caught.value)
    assert "\n" not in message
    assert "database is locked" in message
    assert "run again" in message
    assert isinstance(caught.value, StoreError)
    # The paid job is still tracked: its request id is in the store, the next run finishes it.
    report = run_sweep(spec, base_url=emulator.base_url, token=emulator.token)
    assert report.complete, report
    assert set(emulator.ledger()["submissions_by_input"].values()) == {1}
