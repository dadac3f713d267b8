"""Waiting for an event, never for a moment: poll the thing itself under a generous deadline.

A fixed sleep guesses how long something takes; a busy machine makes the guess wrong. These
helpers look at the event (a state in the store, a line in a log, a count in the emulator's
ledger) until it happens, and fail with a message naming it only after ``PATIENCE`` seconds.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

PATIENCE = 120.0  # seconds: far longer than anything takes, even on a machine 10x slower
T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    what: str,
    *,
    patience: float = PATIENCE,
    proc: subprocess.Popen[str] | subprocess.Popen[bytes] | None = None,
) -> T:
    """Call ``check`` until it returns something true and return that; fail naming ``what``.

    With ``proc``, fail at once if that process ends first (the event can no longer come).
    """
    deadline = time.monotonic() + patience
    while True:
        answer = check()
        if answer:
            return answer
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (exit {proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {patience:.0f} s")
        time.sleep(0.02)


def store_events(db_path: Path, to_state: str | None = None) -> int:
    """How many state changes (into ``to_state``, or any) the store at ``db_path`` holds.

    0 before the store exists. Read with sqlite3 directly, so a runner mid-write is no obstacle.
    """
    if not db_path.exists():
        return 0
    uri = f"file:{db_path}?mode=ro"
    where, args = ("WHERE to_state = ?", (to_state,)) if to_state else ("", ())
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=30.0)) as raw:
            (count,) = raw.execute(f"SELECT count(*) FROM events {where}", args).fetchone()
    except sqlite3.OperationalError:  # created but not migrated yet: no table
        return 0
    return int(count)


class DrivenClock:
    """An emulator clock the test drives: real time until ``freeze()``, then only ``advance()``.

    ``EmulatorConfig(clock=DrivenClock(frozen=True))`` keeps every job where it is (running stays
    running however slow the machine) until the test moves time on, after the event it awaited.
    """

    def __init__(self, *, frozen: bool = False) -> None:
        self.offset = 0.0
        self.now: float | None = time.time() if frozen else None

    def __call__(self) -> float:
        return self.now if self.now is not None else time.time() + self.offset

    def freeze(self) -> None:
        self.now = self()

    def release(self) -> None:
        """Run with real time again, from where the clock stood (it never goes back)."""
        if self.now is not None:
            self.offset, self.now = self.now - time.time(), None

    def advance(self, seconds: float) -> None:
        if self.now is not None:
            self.now += seconds
        else:
            self.offset += seconds
