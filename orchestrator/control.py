"""Steering a live run from another shell: the mailbox both sides read and write.

``comfysweep stop`` and ``comfysweep cancel`` post a request in the store's ``controls`` table;
the live run looks for new ones every tick and before each submit (one indexed read of the
newest id: the hot loop never scans), marks each seen and writes its outcome in one line. A run
only takes requests posted after it started: one that no run took is withdrawn by its poster, and
an old one never stops a later run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from orchestrator.errors import StoreError
from orchestrator.store import JobRow, JobState, Store
from orchestrator.store.rows import Control, RunInfo

__all__ = [
    "IN_FLIGHT",
    "WAIT",
    "Control",
    "Mailbox",
    "Waited",
    "cancel_outcome",
    "split_in_flight",
    "wait_for_run",
]

# The states a cancel request names for the live run: it holds these jobs.
IN_FLIGHT = (JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING)

# Seconds `stop` and `cancel` wait for the live run to take their request (a tick is 1 s; a
# store the run holds busy for a while, or a slow machine, may take longer).
WAIT = 30.0
_LOOK_EVERY = 0.05


class Mailbox:
    """The live run's side: requests newer than the run's start, each taken once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.last = store.controls_last()
        run = None if store.run_id is None else store.run_info(store.run_id)
        if run is not None:
            # Requests posted since the run took the store (its sync may take minutes) are its
            # own; earlier ones were for earlier runs, and none of those ever acts now.
            fresh = [
                r.id
                for r in store.controls_after(0)
                if r.seen_at is None and r.requested_at >= run.started_at
            ]
            self.last = min(fresh) - 1 if fresh else self.last

    def take(self) -> list[Control]:
        """New requests, marked seen by this run; [] (one cheap read) when there are none.

        A request is this run's once marked seen: one the store refused to mark (StoreError,
        raised when it is the first) is read again next time, never skipped.
        """
        if self.store.controls_last() <= self.last:
            return []
        taken: list[Control] = []
        for request in self.store.controls_after(self.last):
            try:
                self.store.see_control(request.id)
            except StoreError:
                if not taken:
                    raise
                break
            taken.append(request)
            self.last = request.id
        return taken


@dataclass(frozen=True)
class Waited:
    """How a request ended for its poster: taken (with the run's outcome so far) or not."""

    request: Control | None  # as last read; None: withdrawn (no run took it)
    run: RunInfo | None  # the run that took it
    # The run took it, then ended (killed, crashed) before answering: no later run takes it.
    ended: bool = False

    @property
    def taken(self) -> bool:
        return self.request is not None and self.request.seen_at is not None


def wait_for_run(
    store: Store,
    control_id: int,
    *,
    until: Callable[[Control], bool],
    patience: float = WAIT,
    runs: Iterable[RunInfo] = (),
    keep: bool = False,
) -> Waited:
    """Wait until the request satisfies ``until`` (seen, or answered), or the live run ends, or
    ``patience`` passes; a request no run took by then is withdrawn (``request`` None). With
    ``keep``, one a run still live has not taken yet is left for it (returned unseen). A run that
    took it and ended before ``until`` is ``ended``."""
    deadline = time.monotonic() + patience
    known = {run.id: run for run in runs}
    while True:
        request = store.control(control_id)
        if request is None:
            return Waited(None, None)
        if until(request):
            return Waited(request, _run_of(store, request, known))
        if request.seen_at is None and (time.monotonic() > deadline or not store.live_runs()):
            if keep and store.live_runs():
                return Waited(request, None)
            if store.withdraw_control(control_id):
                return Waited(None, None)
            continue  # taken meanwhile: read it again
        if request.seen_at is not None and request.run_id not in store.live_run_ids():
            request = store.control(control_id)  # answered just before it ended?
            if request is not None and until(request):
                return Waited(request, _run_of(store, request, known))
            return Waited(request, known.get(request.run_id or 0) if request else None, ended=True)
        if request.seen_at is not None and time.monotonic() > deadline:
            return Waited(request, _run_of(store, request, known))
        time.sleep(_LOOK_EVERY)


def _run_of(store: Store, request: Control, known: dict[int, RunInfo]) -> RunInfo | None:
    if request.run_id is None:
        return None
    if request.run_id not in known:
        try:
            for run in store.live_runs():
                known[run.id] = run
        except StoreError:
            return None
    return known.get(request.run_id)


def cancel_outcome(
    not_sent: int, sending: int, cancelled: int, running: int, failed: Iterable[str] = ()
) -> str:
    """The live run's line for a cancel request: what it did with the jobs in flight."""
    parts = []
    if not_sent:
        parts.append(f"{not_sent} claimed never sent")
    if sending:
        parts.append(f"{sending} being submitted are cancelled once queued")
    parts.append(f"{cancelled} queued cancelled remotely")
    parts.append(
        f"{running} running {'finishes and is' if running == 1 else 'finish and are'} billed"
    )
    failures = list(failed)
    if failures:
        parts.append(f"{len(failures)} could not be cancelled ({failures[0]})")
    return ", ".join(parts)


def split_in_flight(
    rows: Iterable[JobRow], sending: set[str]
) -> tuple[list[JobRow], list[JobRow], int, int]:
    """Jobs a cancel covers, by what the run does: (queued to cancel remotely, running, claimed
    and never to be sent, being sent now)."""
    queued: list[JobRow] = []
    running: list[JobRow] = []
    not_sent = in_send = 0
    for row in rows:
        if row.state is JobState.QUEUED:
            queued.append(row)
        elif row.state is JobState.RUNNING:
            running.append(row)
        elif row.state is JobState.SUBMITTING:
            if row.key in sending:
                in_send += 1
            else:
                not_sent += 1
    return queued, running, not_sent, in_send
