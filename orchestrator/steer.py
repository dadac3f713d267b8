"""What ``comfysweep stop`` and ``comfysweep cancel`` do from any shell, a run live or not.

With a run live, both go through the store's mailbox (orchestrator/control.py): ``stop`` asks it
to drain, like a first Ctrl-C; ``cancel`` moves the matching pending jobs to ``cancelled`` itself
(in one transaction, each a conditional UPDATE a runner's claim cannot overlap) and hands the jobs
in flight to the run, which never sends them, cancels the queued ones remotely and lets the running
ones finish (they are billed). Without a live run, ``cancel`` does all of it itself.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from orchestrator import control
from orchestrator.client import ModelApiClient
from orchestrator.errors import ComfysweepError
from orchestrator.locate import Located
from orchestrator.runner import CancelReport, RunReport, cancel_queued
from orchestrator.store import JobRow, JobState, Store
from orchestrator.store.rows import RunInfo
from orchestrator.views import check_owner
from orchestrator.where import select

if TYPE_CHECKING:
    from orchestrator.emulator import EmulatorConfig

__all__ = ["Cancelled", "NotLive", "cancel_jobs", "go_on", "run_command", "stop_run"]

_FLYING = frozenset(control.IN_FLIGHT)


class NotLive(ComfysweepError):
    """No run of this sweep is live."""


def run_command(located: Located, *, spec: Path | None = None, store: str | None = None) -> str:
    """How the user runs this sweep again, as they would type it (SPEC when it is unknown)."""
    from orchestrator.sweep import _shown_store

    words = ["comfysweep", "run", str(spec) if spec is not None else "SPEC"]
    if located.results is not None and (located.results / ".emulator").exists():
        words.append("--emulator")  # ran on the emulator: never send it to the paid API
    shown = _shown_store(store)  # a URL's password masked: this line is printed
    if shown is not None:
        words += ["--store", shown]
    return shlex.join(words)


def stop_run(
    located: Located, *, wait: bool = True, patience: float = control.WAIT, command: str
) -> str:
    """Ask the live run to drain; the line that says it did (NotLive when no run is live).

    ``wait`` False posts the request and returns at once; otherwise a request that the run ended
    before taking is withdrawn and NotLive, and one that a run still starting (syncing its jobs,
    asking before it pays) has not read within ``patience`` is left for it to take.
    """
    with Store.open(located.store) as db:
        check_owner(db, located)
        runs = db.live_runs()
        if not runs:
            raise NotLive(f"no run of {located.name} is live: nothing to stop")
        control_id = db.request_control("stop")
        if not wait:
            run: RunInfo = runs[0]
            return (
                f"run {run.id} (pid {run.pid}) is asked to drain; `{command}` brings the rest back"
            )
        waited = control.wait_for_run(
            db,
            control_id,
            until=lambda r: r.outcome is not None,
            patience=patience,
            runs=runs,
            keep=True,
        )
    if waited.request is None:
        raise NotLive(f"no run of {located.name} took the stop request: none is live now")
    if waited.ended:
        run = waited.run or runs[0]
        return (
            f"run {run.id} (pid {run.pid}) ended as it took the stop request; `{command}` "
            "brings the rest back"
        )
    if not waited.taken:
        return (
            f"run {runs[0].id} (pid {runs[0].pid}) has not read the stop request within "
            f"{patience:g} s (still starting: syncing its jobs, or asking before it pays?); it "
            f"drains as soon as it does; `{command}` brings the rest back"
        )
    run = waited.run or runs[0]
    outcome = waited.request.outcome  # the run says how it is run again (--emulator, --store)
    if outcome is None:
        outcome = f"draining: jobs in flight finish; `{command}` brings the rest back"
    return f"run {run.id} (pid {run.pid}) is {outcome}"


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: jobs cancelled before any submit, and what became of those in flight."""

    pending: int
    in_flight: str  # one line: queued cancelled remotely, running ones billed
    failed: tuple[str, ...] = ()
    run: RunInfo | None = None  # the live run that took the request, if any

    @property
    def line(self) -> str:
        return f"{self.pending} pending cancelled, {self.in_flight}"


def cancel_jobs(
    located: Located,
    *,
    where: str | None = None,
    emulator: bool | EmulatorConfig = False,
    base_url: str | None = None,
    token: str | None = None,
    patience: float = control.WAIT,
) -> Cancelled:
    """Cancel the sweep's pending and in-flight jobs (those ``where`` matches); see the module."""
    with Store.open(located.store) as db:
        check_owner(db, located)
        chosen = select(where, db.jobs(), _cancellable)
        if where is not None and not chosen:
            raise ComfysweepError(
                f"--where {where!r} matches no job of {located.name} that is pending or in flight: "
                "nothing cancelled"
            )
        keys = [row.key for row in chosen]
        runs = db.live_runs()
        remote = (JobState.QUEUED, JobState.RUNNING)
        if not runs and emulator is False and any(row.state in remote for row in chosen):
            ModelApiClient.check_token(token)  # said before anything changes
        before = 0  # pending jobs cancelled here before a run that ended took the rest
        if runs:
            done, before = _through_the_run(db, keys, where, runs, patience)
            if done is not None:
                return done
            if db.live_runs():  # alive, but not reading its mailbox (stuck on a busy store?)
                raise ComfysweepError(
                    f"run {runs[0].id} (pid {runs[0].pid}) did not take the cancel request "
                    f"within {patience:g} s: {before} pending cancelled; the jobs in flight are "
                    "left to it (cancel again, or stop it first)"
                )
        with db.lock(owner=f"comfysweep cancel {located.name}"):
            cancelled, states, _ = db.cancel_pending(keys, request=False)
            pending = before + len(cancelled)
            # Read again under the lock: a run that ended meanwhile moved some on.
            rows = [row for key, state in states.items() if state in remote if (row := db.get(key))]
            caught = sum(1 for state in states.values() if state is JobState.SUBMITTING)
            if not rows:
                return Cancelled(pending, _by_itself(0, 0) + _mid_submit(caught))
            with _backend(emulator, located, base_url, token) as (url, api_token):
                report = anyio.run(_cancel_remotely, db, ModelApiClient(url, api_token), rows)
            line = _by_itself(report.cancelled, report.not_cancellable) + _mid_submit(caught)
            return Cancelled(pending, line, tuple(report.failed))


def _mid_submit(caught: int) -> str:
    """What becomes of jobs a dead run left ``submitting``: nobody knows whether they were sent."""
    if not caught:
        return ""
    return (
        f", {caught} caught mid-submit by a run that died: not cancelled (the next run marks "
        "them unknown: they may be billed)"
    )


def _through_the_run(
    db: Store, keys: list[str], where: str | None, runs: Sequence[RunInfo], patience: float
) -> tuple[Cancelled | None, int]:
    """Cancel the pending jobs here and hand those in flight to the live run; None (and how many
    pending jobs were cancelled) when the run ended before taking them: the caller then cancels
    them itself."""
    cancelled, _, control_id = db.cancel_pending(keys, request=True, where=where)
    if control_id is None:
        return Cancelled(len(cancelled), _by_itself(0, 0), run=runs[0]), len(cancelled)
    waited = control.wait_for_run(
        db, control_id, until=lambda r: r.outcome is not None, patience=patience, runs=runs
    )
    if waited.request is None or waited.ended:  # no run acts on it now: the caller does
        return None, len(cancelled)
    outcome = waited.request.outcome or "the live run took the jobs in flight: see its log"
    return Cancelled(len(cancelled), outcome, run=waited.run or runs[0]), len(cancelled)


def _cancellable(row: JobRow) -> bool:
    return (row.state is JobState.PENDING and row.in_spec) or row.state in _FLYING


def _by_itself(cancelled: int, running: int) -> str:
    return control.cancel_outcome(0, 0, cancelled, running)


async def _cancel_remotely(db: Store, client: ModelApiClient, rows: list[JobRow]) -> CancelReport:
    async with client:
        report = await cancel_queued(client, rows)
    for key in report.keys:
        db.transition(key, JobState.CANCELLED, detail="cancelled on request")
    return report


@contextlib.contextmanager
def _backend(
    emulator: bool | EmulatorConfig, located: Located, base_url: str | None, token: str | None
) -> Iterator[tuple[str | None, str | None]]:
    if emulator is False:
        yield base_url, token
        return
    from orchestrator.emulator import Emulator, EmulatorConfig
    from orchestrator.sweep import EMULATOR_SPEED

    if isinstance(emulator, EmulatorConfig):
        config = emulator
    else:
        state = None if located.results is None else located.results / ".emulator"
        config = EmulatorConfig(speed=EMULATOR_SPEED, state_path=state)
    with Emulator(config) as emu:
        yield emu.base_url, emu.token


def go_on(report: RunReport, command: str, retry: str) -> str | None:
    """The last line of a run that stopped short (a drain, the budget, a deadline, an abort):
    the command that brings the rest back, as summary.md's next steps say it (the run's flags
    repeated, a raised cap or a price given). None when nothing is left to bring back."""
    go, again = _next_commands(report)
    counts = report.counts
    cancelled = counts.get("cancelled", 0)
    if go is None and counts.get("pending", 0) + counts.get("succeeded", 0):
        go = command
        if report.stop_kind == "budget" and "to finish them: " in (report.stop_reason or ""):
            go = (report.stop_reason or "").rsplit("to finish them: ", 1)[-1]
    again = again or f"{retry} --cancelled"
    if go is not None and cancelled:
        return f"to go on: {go} (and `{again}` for the {cancelled} cancelled)"
    if go is not None:
        return f"to go on: {go}"
    if cancelled:
        return f"to go on: {again}"
    return None


def _next_commands(report: RunReport) -> tuple[str | None, str | None]:
    """From the run's account (summary.md's "Next"): the command that goes on, and the one that
    puts the cancelled jobs back."""
    steps = (report.account or {}).get("next") or []
    go = cancelled = None
    for step in steps:
        head, _, code = str(step).partition(": ")
        found = code.strip().strip("`").strip()
        if head.startswith(("resume", "raise the cap", "give a price")):
            go = found
        elif head.startswith("retry") and head.endswith(" cancelled"):
            cancelled = found
    return go, cancelled
