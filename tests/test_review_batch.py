"""Hostile review of batched claims and the group commit (issue 12): each test failed first.

Money is proved with the emulator's ledger, states with the store as committed on disk.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec


def _submitting(path: Path) -> int:
    """Jobs ``submitting`` as committed on disk (read by a connection of its own)."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        (n,) = db.execute("SELECT count(*) FROM jobs WHERE state = 'submitting'").fetchone()
    finally:
        db.close()
    return int(n)


def _interrupting(monkeypatch: pytest.MonkeyPatch, db_file: Path, *, presses: int) -> list[int]:
    """Each POST notes the jobs claimed on disk as it leaves; the first one's answer is followed
    by ``presses`` Ctrl-C."""
    real_submit = ModelApiClient.submit
    claimed_at_post: list[int] = []

    answered: list[str] = []

    async def submit(self: ModelApiClient, *args: Any) -> Any:
        claimed_at_post.append(_submitting(db_file))
        submitted = await real_submit(self, *args)
        answered.append(submitted.request_id)
        if len(answered) == 1:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return submitted

    monkeypatch.setattr(ModelApiClient, "submit", submit)
    return claimed_at_post


# A rate of 3.5 requests a second saves up one token: one job may leave at once, the next ones
# wait their turn (behind the first job's polls and download too).
SLOW = Overrides(concurrency=4, poll_interval=0.02, rate=3.5)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_sends_no_job_that_waited_for_the_rate_and_leaves_none_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, presses: int
) -> None:
    """Claimed jobs used to wait for the rate inside the client's submit, past the runner's last
    look at a stop: after one Ctrl-C ("no new submits") they were sent anyway; after two, left
    ``submitting`` (never sent), the next run marked them ``unknown`` (maybe billed)."""
    spec = write_spec(tmp_path)  # 4 jobs
    db_file = tmp_path / "results" / "grid" / "comfysweep.db"
    claimed_at_post = _interrupting(monkeypatch, db_file, presses=presses)
    with Emulator(EmulatorConfig(speed=500.0, workers=4)) as emu:
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, overrides=SLOW, handle_signals=True
        )
        ledger = emu.ledger()
    assert report.stop_kind == "interrupted"
    assert len(ledger["jobs"]) == 1  # nothing was sent after the Ctrl-C
    assert report.counts["pending"] == 3  # back in the queue, neither submitting nor unknown
    assert _submitting(db_file) == 0
    # A job is claimed only once its POST may leave at once: one token saved up, one job.
    assert claimed_at_post == [1]


def test_a_cancel_read_while_a_paid_jobs_request_id_waits_for_its_batch_says_being_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group commit lets other tasks run before it commits a request id: a cancel request
    read then found the paid job still ``submitting`` and no longer being sent, and answered
    "claimed never sent" for a job the API had created (and billed, once it runs)."""
    from orchestrator import control
    from orchestrator.runner import Runner
    from orchestrator.store import JobState, Store
    from orchestrator.store.batch import Write

    runners: list[Runner] = []
    real_init = Runner.__init__

    def init(self: Runner, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        runners.append(self)

    told: list[str] = []
    real_apply = Store.apply

    def apply(self: Store, writes: Any) -> Any:
        paid = {w.key for w in writes if isinstance(w, Write) and w.to is JobState.QUEUED}
        if paid and runners:  # what a cancel request read now would answer for those jobs
            rows = [r for r in self.jobs([JobState.SUBMITTING]) if r.key in paid]
            _, _, not_sent, sending = control.split_in_flight(rows, runners[0]._sending)
            told.append(control.cancel_outcome(not_sent, sending, 0, 0))
        return real_apply(self, writes)

    monkeypatch.setattr(Runner, "__init__", init)
    monkeypatch.setattr(Store, "apply", apply)
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=500.0, workers=4)) as emu:
        report = run_sweep(
            spec, base_url=emu.base_url, token=emu.token, overrides=Overrides(poll_interval=0.02)
        )
    assert report.complete
    assert told, "no request id was committed through the group commit"
    assert not [line for line in told if "never sent" in line], told
