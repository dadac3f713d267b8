"""The runner: one anyio task group that submits, polls and downloads a sweep's jobs.

The money rule shapes every step: the store commits ``submitting`` before the POST leaves and the
request id before anything else happens to the job; a submit whose answer was lost becomes
``unknown`` and is never sent again on its own; a finished job's outputs are downloaded before any
new job is submitted. Tasks are proportional to jobs in flight: one task per job on the remote side
or being downloaded, plus a submitter and a ticker. No SQL and no raw HTTP here: the store and the
client own those, and the client owns every retry.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from pydantic import ConfigDict, Field

from orchestrator import budget, control, prices
from orchestrator.client import ModelApiClient, RemoteState, Result
from orchestrator.deadline import Deadline
from orchestrator.errors import (
    ApiError,
    AuthError,
    BalanceError,
    ComfysweepError,
    DownloadError,
    ModelNotFound,
    OutcomeUnknown,
    OutputExpired,
    OutputInvalid,
    RequestNotFound,
    ResultsError,
    ServerError,
    StoreBusyError,
    StoreError,
    TransitionError,
    TransportError,
    ValidationFailed,
)
from orchestrator.failures import FailureLimit, Failures
from orchestrator.manifest import LiveManifest
from orchestrator.pacing import PollPlanner, prepaid, server_duration
from orchestrator.progress import Progress, Snapshot
from orchestrator.responses import integer
from orchestrator.results import ResultsFolder
from orchestrator.settings import RunSettings
from orchestrator.store import Claims, JobRow, JobState, Store
from orchestrator.store.batch import GroupCommit, Write
from orchestrator.store.journal import RequestJournal

__all__ = ["CancelReport", "RunOptions", "RunReport", "Runner", "cancel_queued"]

log = logging.getLogger("comfysweep.runner")
T = TypeVar("T")

_IN_FLIGHT = (JobState.QUEUED, JobState.RUNNING)
_SETTLES = (RemoteState.SUCCEEDED, RemoteState.FAILED, RemoteState.CANCELLED)
# Ticks between looks for a dead runner's jobs to take over (PostgreSQL: several runners).
_ADOPT_EVERY = 5
# Consecutive failed polls (each already retried by the client) before a job is left for next run.
_POLL_GIVE_UP = 8
# Submits in a row whose answer was lost before submitting stops: an API that creates jobs and then
# fails to answer would otherwise bill a whole sweep of jobs nobody can track.
_UNKNOWN_IN_A_ROW = 3
# Submits refused (429/408) past all their retries, in a row, that stop submitting: each already
# waited out the API's pauses, so this many is minutes of throttling, not a few seconds.
_REFUSED_IN_A_ROW = 5
# Seconds between attempts to record a request id the store refused, doubling up to the last.
_RECORD_RETRY = (0.05, 5.0)
# Seconds a job's write may wait for a store another program holds (busy), and for a store that
# refuses it otherwise (disk full, I/O error: rarely gone in a moment), before the run stops.
_STORE_PATIENCE = 300.0
_STORE_GLITCH = 1.0
# Downloads of one output that arrive cut short or unreadable before it is left for the next run.
_INVALID_TRIES = 3
# Outputs up to this size are verified on the event loop: a millisecond, less than a thread hop.
_VERIFY_INLINE = 4 * 1024**2


class RunOptions(RunSettings):
    """The run settings (defaults and bounds from ``RunSettings``) and how this process behaves."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    abort_on_stop: bool = False
    handle_signals: bool = False
    tick: float = Field(1.0, gt=0)
    deadline: Deadline | None = None  # --until (orchestrator/deadline.py)


@dataclass
class RunReport:
    """How a run ended."""

    counts: dict[str, int]
    spent_usd: float
    elapsed: float
    stop_reason: str | None = None
    # What stopped it: "budget", "deadline", "failures", "interrupted", "stopped" (None: nothing)
    stop_kind: str | None = None
    fatal: bool = False
    messages: list[str] = field(default_factory=list)
    results_dir: Path | None = None
    orphaned: int = 0  # jobs no longer in the spec (not in ``counts``): kept, never submitted
    account: dict[str, Any] | None = None  # the morning account (summary.md), once written
    reserved_usd: float = 0.0  # open reservations: jobs in flight, unknown or lost (may be billed)
    cap_usd: float | None = None

    @property
    def complete(self) -> bool:
        """Every job of the sweep (its spec's, orphaned jobs aside) is done."""
        return not self.fatal and all(n == 0 for state, n in self.counts.items() if state != "done")


class Runner:
    """Runs the pending and in-flight jobs of one store against one API client."""

    def __init__(
        self,
        store: Store,
        client: ModelApiClient,
        folder: ResultsFolder,
        options: RunOptions | None = None,
        *,
        progress: Progress | None = None,
        estimate: budget.Estimator | None = None,
        command: str = "comfysweep run SPEC",
    ) -> None:
        self.store = store
        self.client = client
        self.folder = folder
        self.options = options or RunOptions()
        self.progress = progress
        # A job's estimated cost from its inputs (None: no price known); reserved at its claim.
        self.estimate: budget.Estimator = estimate or (lambda inputs: None)
        self.command = command  # how the user runs this sweep again, for the messages
        self.price_given = False  # --price priced the jobs (its refusal says so, not "give one")
        self._stop_reason: str | None = None
        self._stop_kind: str | None = None
        # Told of "stall" and "budget" events (the notifier, set by sweep.run_sweep).
        self.on_event: Callable[[str, str], None] | None = None
        self._cost_said = False
        self._fatal = False
        self._messages: list[str] = []
        self._remote = 0  # jobs submitting, queued or running on the remote side
        self._download_backlog = 0  # finished jobs whose outputs are not on disk yet
        self._downloading = 0  # downloads under way now (progress, though no state changes)
        self._changed = anyio.Event()
        self._any_submit_ok = False
        self._unknown_in_a_row = 0
        self._refused_in_a_row = 0  # submits refused by 429/408 past their retries, in a row
        self._dirty = True
        self._downloads = anyio.CapacityLimiter(max(1, self.options.downloads))
        self._interrupts = 0
        self._started: dict[str, float] = {}
        self.durations: list[float] = []  # seconds from submit to result, this run's jobs
        self._jobs: TaskGroup | None = None
        self._journal = RequestJournal.beside(store, folder.root)
        self._unrecorded: dict[str, str] = {}  # key -> answered request id the store refused
        self._store_waiting = 0  # writes waiting for a store that refused them
        self._store_said = False  # the user was told the store is busy
        self.deadline = self.options.deadline
        self.download_times: list[float] = []  # seconds each job's downloads took, this run
        self._submits = 0  # jobs this run began to submit
        limit = self.options.max_failures
        self._failures = Failures(None if limit is None else FailureLimit.parse(limit))
        self._retrying = 0  # failed jobs on their way back to pending (retries)
        self._requeued = 0  # failed jobs put back to pending by this run
        self._last_change = time.monotonic()  # when a job last changed state
        self._stall_level = 1  # the next stall line waits for stall_after times this
        self.polls = PollPlanner(self.options.poll_interval)  # when to poll each job
        self._mailbox: control.Mailbox | None = None  # stop/cancel from another shell
        self._cancel_keys: set[str] = set()  # jobs a cancel request covers: never sent
        self._sending: set[str] = set()  # jobs whose POST is under way
        self._abort_sending: set[str] = set()  # ... when `--abort` began: cancelled once recorded
        self._writes = GroupCommit(store)  # the jobs' writes, committed together (batch.py)
        if client.pacer is not None:
            client.pacer.on_change = self._wake  # more submits allowed in flight
        self.manifest = LiveManifest(folder, store)  # appended each tick, whole at the end

    # -- public -----------------------------------------------------------------------------

    def stop(self, reason: str, *, fatal: bool = False, kind: str = "stopped") -> None:
        """Submit nothing more; jobs in flight are still polled and downloaded."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_kind = kind
            self._say(reason)
            if kind == "budget":
                self._notify("budget", reason)
        elif self._stop_kind == "budget" and kind != "budget":
            # Jobs the budget let through, claimed but not sent, are held back after all.
            self._stop_reason, self._stop_kind = reason, kind
            self._say(reason)
        self._fatal = self._fatal or fatal
        self._wake()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    @property
    def _halted(self) -> bool:
        """Stopped for a reason that also holds back jobs claimed but not sent yet.

        The budget's stop does not: those jobs' estimates were reserved under the cap.
        """
        return self.stopping and self._stop_kind != "budget"

    async def run(self) -> RunReport:
        """Resume what a previous run left, submit every pending job, wait for all of it."""
        started = time.monotonic()
        self.manifest.start()  # before any job moves: the moves from here on are appended
        self._recover()
        self._mailbox = control.Mailbox(self.store)
        if self.deadline is not None:
            self._say(self.deadline.startup())
            if self.deadline.fallback is None:  # what a job took last time, if remembered
                model_id = self.store.get_meta("model_id")
                last = prices.last_duration(str(model_id), api_base=self.client.base_url)
                self.deadline = replace(self.deadline, fallback=last)
        # Recorded for status, summaries and other runners; PostgreSQL shares the concurrency.
        self.store.set_budget(self.options.max_cost, self._shared_concurrency())
        added = self.store.reserve_unpriced(self.estimate)  # may be billed: never counted $0
        if added:
            self._say(
                f"${added:.2f} now counted for jobs in flight, unknown or retried that no price "
                "covered (they may be billed)"
            )
        counts = self.store.counts(in_spec=True)
        snapshot = Snapshot(counts=counts, spent_usd=self.store.spent())
        snapshot.worked_at_start = snapshot.worked
        error = None
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._ticker, snapshot)
                if self.options.handle_signals:
                    outer.start_soon(self._signals, outer)
                async with anyio.create_task_group() as jobs:
                    self._jobs = jobs
                    self._resume(jobs)
                    await self._submit_loop(jobs)
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = _ours(group)
            if error is None:
                raise
        if error is not None:  # raised out here, so it does not chain the group as its context
            raise error
        self._write_manifest(whole=True)
        counts = self.store.counts(in_spec=True)
        books = self.store.ledger()
        if self.progress is not None:
            snapshot.counts, snapshot.spent_usd = counts, books.spent_usd
            self.progress.update(snapshot)
        return RunReport(
            counts=counts,
            spent_usd=books.spent_usd,
            elapsed=time.monotonic() - started,
            stop_reason=self._stop_reason,
            stop_kind=self._stop_kind,
            reserved_usd=books.reserved_usd,
            cap_usd=self.options.max_cost,
            fatal=self._fatal,
            messages=self._messages,
            results_dir=self.folder.root,
            orphaned=sum(self.store.counts(in_spec=False).values()),
        )

    # -- start-up ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Make a killed run's leftovers safe: no partial file, no submit silently repeated."""
        self.folder.attach(self.store)
        removed = self.folder.prepare(warn=self._say)
        if removed:
            self._say(f"removed {removed} partial download(s) left by an interrupted run")
        # Before `submitting` becomes unknown: a request id the last run could only journal.
        for line in self._journal.replay(self.store):
            self._say(line)
        self._adopt_submitting()
        # One lean read of the done jobs' outputs; whole rows only for those whose files are gone.
        gone = {
            key
            for key, outputs in self.store.recorded_outputs(JobState.DONE)
            if not all(self.folder.has(o) for o in outputs)
        }
        missing = self.store.adopt(
            [JobState.DONE],
            where=lambda row: row.key in gone and not all(self.folder.has(o) for o in row.outputs),
        )
        for row in missing if gone else ():
            self.store.transition(
                row.key, JobState.SUCCEEDED, detail="output missing on disk: download again"
            )

    def _adopt_submitting(self) -> None:
        """A dead run's submits: recorded from its journal, or unknown (never sent again)."""
        for row in self.store.adopt([JobState.SUBMITTING]):
            # Its run is dead now (adopt checked): an answer it journaled is complete, and may have
            # come after the replay above let it be (PostgreSQL: that run was still alive then).
            answer = self._journal.answer(row.key, row.attempts)
            if answer is not None:
                self.store.transition(
                    row.key,
                    JobState.QUEUED,
                    expect=[JobState.SUBMITTING],
                    request_id=answer,
                    detail="request id recovered from the journal: the store could not record it",
                )
                self._say(f"job {row.key[:10]}: request id {answer} recovered from the journal")
                continue
            self.store.transition(
                row.key,
                JobState.UNKNOWN,
                detail="interrupted while submitting: the job may exist remotely and be billed; "
                "`comfysweep retry --unknown` submits it again on purpose",
            )

    def _resume(self, jobs: TaskGroup) -> None:
        """Track the jobs in flight and download the finished ones that no live run holds.

        At start-up, a killed run's; later (PostgreSQL, from the ticker) a dead runner's: taken
        over by a compare-and-set in the store, polled and downloaded, never submitted again.
        """
        for row in self.store.adopt(_IN_FLIGHT):
            self._remote += 1
            jobs.start_soon(self._track, row, 0.0)
        for row in self.store.adopt([JobState.SUCCEEDED]):
            self._download_backlog += 1
            jobs.start_soon(self._download, row)

    # -- submitting -------------------------------------------------------------------------

    async def _submit_loop(self, jobs: TaskGroup) -> None:
        while True:
            await self._wait_until(self._may_submit)
            if self.stopping:
                return
            paced = await self._paced(self._claim_size())
            if not paced:  # a stop, or a finished job's download, came first
                continue
            claims = await self._persist("claiming jobs", functools.partial(self._claim, paced))
            unsent = paced - len(claims.rows)
            for row in claims.rows:  # durable, all of them, before any POST leaves
                problem = self.folder.name_problem(row)  # found now, not after the job is paid
                if problem is not None:
                    unsent += 1
                    await self._commit(row.key, JobState.FAILED, detail=problem, error=problem)
                    continue
                self._remote += 1
                self._submits += 1
                jobs.start_soon(self._submit, row)
            self._give_back(unsent)
            if claims.refused == "busy":  # other runners fill the shared concurrency
                if not claims.rows:
                    with anyio.move_on_after(self.options.tick):
                        await self._wait_until(lambda: self.stopping)
                continue
            if claims.refused is not None:
                self.stop(self._budget_stop(claims), kind="budget")
                return
            if claims.rows:
                continue
            if not (self._remote or self._retrying):
                return
            await self._await_requeue()  # a failed job may come back (``retries``)

    async def _await_requeue(self) -> None:
        """Until a job comes back to pending (``retries``), or none still out can."""
        seen = self._requeued
        await self._wait_until(
            lambda: self.stopping or self._requeued != seen or not (self._remote or self._retrying)
        )

    async def _claim(self, limit: int) -> Claims:
        """Up to ``limit`` jobs (as many as may be sent now), claimed in one durable transaction."""
        return self.store.claim_batch(
            self.estimate,
            cap=self.options.max_cost,
            concurrency=self._shared_concurrency(),
            limit=limit,
        )

    async def _paced(self, want: int) -> int:
        """Up to ``want`` of the client's rate tokens, at least one waited for, taken before the
        jobs they are for are claimed: a claimed job's POST then leaves at once, never queued
        behind the rate (polls take tokens too), where a stop would not hold it back and a kill
        would leave it ``unknown`` though never sent. 0 when a stop, or a finished job's
        download, comes first (no token kept)."""
        pacer = self.client.pacer
        if pacer is None:
            return want
        got = pacer.take_ready(want)
        if got:
            return got
        taken = False
        async with anyio.create_task_group() as waiting:

            async def give_up() -> None:
                await self._wait_until(lambda: self.stopping or not self._may_submit())
                waiting.cancel_scope.cancel()

            waiting.start_soon(give_up)
            await pacer.wait()  # gives its token back if cancelled
            taken = True
            waiting.cancel_scope.cancel()
        if not taken:
            return 0
        if self.stopping or not self._may_submit():
            pacer.give_back()
            return 0
        return 1 + pacer.take_ready(want - 1)

    def _give_back(self, tokens: int) -> None:
        """Rate tokens taken for submits that will not be made (``_paced``)."""
        pacer = self.client.pacer
        if pacer is not None:
            for _ in range(tokens):
                pacer.give_back()

    def _claim_size(self) -> int:
        """The free slots, no more than the client may send at once (its rate's saved tokens,
        taken by ``_paced``): a job claimed and not sent yet is ``unknown`` if the run is killed,
        so none waits. One at a time under ``--until``, whose first wave is counted job by job."""
        if self.deadline is not None:
            return 1
        free = self._concurrency() - self._remote
        pacer = self.client.pacer
        if pacer is not None:
            free = min(free, pacer.ready())
        return max(1, free)

    def _shared_concurrency(self) -> int | None:
        """The concurrency every runner on the store shares (PostgreSQL); SQLite has one runner."""
        return None if self.store.is_sqlite else self.options.concurrency

    def _budget_stop(self, claim: Claims) -> str:
        """The line a run stopped by its budget says: what is left, and how to go on."""
        if claim.refused == "price":
            return budget.no_price_message(self.command, given=self.price_given)
        assert self.options.max_cost is not None
        books = claim.ledger
        jobs, usd, unpriced = self.store.undone(self.estimate)
        return budget.stop_message(
            cap=self.options.max_cost,
            spent=books.spent_usd,
            reserved=books.reserved_usd,
            next_estimate=claim.estimate or 0.0,
            undone_jobs=jobs,
            undone_usd=usd,
            unpriced=unpriced,
            command=self.command,
        )

    def _may_submit(self) -> bool:
        if self.stopping:
            return True
        if self._unrecorded or self._store_waiting:  # a paid job's state waits for the store
            return False
        # Output URLs expire, and our disk may refuse them: until a finished job's download ends
        # (its outputs on disk, or the job settled, or the run stopped), nothing new goes out.
        if self._remote >= self._concurrency() or self._download_backlog > 0:
            return False
        return self._before_deadline()

    def _concurrency(self) -> int:
        """Jobs in flight at once: the setting, shrunk while the API answers 429 (pacing.py)."""
        pacer = self.client.pacer
        return (
            self.options.concurrency
            if pacer is None
            else pacer.submit_limit(self.options.concurrency)
        )

    def _before_deadline(self) -> bool:
        """``--until``: stop once a new job would end too late; False while nothing says how long
        a job takes and the first wave is out (the first job to end tells)."""
        deadline = self.deadline
        if deadline is None:
            return True
        if deadline.too_late(0.0):  # passed already (a long sync): not even a first wave
            self.stop(deadline.passed_line(), kind="deadline")
            return True
        need = deadline.need(self.durations, self.download_times)
        if need is None:
            return self._remote == 0 or self._submits < self.options.concurrency
        if deadline.too_late(need):
            self.stop(deadline.stop_line(need), kind="deadline")
        return True

    async def _submit(self, row: JobRow) -> None:
        # A job may have finished since this one was claimed: its download goes first (its URLs
        # expire, and our disk may refuse it); a stop meanwhile puts this one back, never sent.
        try:
            await self._wait_until(lambda: self._halted or self._download_backlog == 0)
            if not self._halted:
                await self._pause_out()
        except anyio.get_cancelled_exc_class():
            # Cancelled before the send (a second Ctrl-C, an error ending the run): never sent,
            # so back to pending, its reservation released, not left ``submitting`` for the next
            # run to count as unknown (maybe billed).
            with contextlib.suppress(ComfysweepError):
                self._move(row.key, JobState.PENDING, detail="not sent: the run was cancelled")
            raise
        cancelled = self._cancelled(row.key)  # reads the mailbox: a stop may come with it
        if self._halted or cancelled:
            self._give_back(1)
            self._release(row.key)
            why = "the run stopped first"
            if row.key in self._cancel_keys:
                why = "cancelled on request"
            await self._commit(row.key, JobState.PENDING, detail=f"not sent: {why}")
            return
        self._sending.add(row.key)
        answered = False
        try:
            with prepaid():  # its token was taken before its claim (_paced)
                submitted = await self.client.submit(row.model_id, row.inputs)
            answered = True
        except ComfysweepError as exc:
            to, stop = self._after_refusal(exc)
            self._unknown_in_a_row = self._unknown_in_a_row + 1 if to == "unknown" else 0
            if stop is None and self._unknown_in_a_row >= _UNKNOWN_IN_A_ROW:
                stop = (
                    f"{self._unknown_in_a_row} submits in a row lost their answer, and each may "
                    f"have created a billed job: {_text(exc)}"
                )
            # Decided before the write's commit (the group commit lets other tasks run): no job
            # claimed meanwhile goes out past a stop, and the slot frees only once it is written.
            if to == "failed":
                self._ended(_text(exc))
            if stop is not None:
                self.stop(f"stopped submitting: {stop}", fatal=True)
            error = {"error": _error(exc)} if isinstance(exc, ApiError) and to == "failed" else {}
            try:
                await self._commit(row.key, to, detail=_text(exc), **error)
            finally:
                self._release(row.key)
            return
        finally:
            if not answered:
                self._sending.discard(row.key)
        self._any_submit_ok = True
        self._unknown_in_a_row = self._refused_in_a_row = 0
        self._started[row.key] = time.monotonic()
        try:
            row = await self._record(row, submitted.request_id)
        finally:  # `submitting` in the store until then: a cancel request reads "being sent"
            self._sending.discard(row.key)
        if row.key in self._cancel_keys or row.key in self._abort_sending:
            # Cancelled (a request, or `--abort`) while its POST was under way: the tracker
            # records what the API says.
            await cancel_queued(self.client, [row])
        await self._track(row, self.options.poll_interval)

    async def _pause_out(self) -> None:
        """Wait out the client's 429 pause before a send: a stop meanwhile holds the job back."""
        pacer = self.client.pacer
        while pacer is not None and not self._halted and (left := pacer.pause_left()) > 0:
            with anyio.move_on_after(left):
                await self._wait_until(lambda: self._halted)

    async def _record(self, row: JobRow, request_id: str) -> JobRow:
        """``queued`` with the request id, before anything else happens to the paid job.

        A store that refuses the write (locked past its busy timeout, disk full) does not lose the
        id: it goes to the journal beside the store (replayed by the next start) and stays in
        memory, new submits wait, and the write is retried until the store takes it.
        """
        try:
            return await self._amove(row.key, JobState.QUEUED, request_id=request_id)
        except TransitionError:
            raise
        except StoreError as exc:
            refused = exc
        self._unrecorded[row.key] = request_id
        journaled = self._journal_append(row, request_id)
        where = f"kept in {self._journal.path}" if journaled else "kept in memory only"
        self._say(
            f"job {row.key[:10]}: the store cannot record request {request_id} "
            f"({_text(refused)}); {where}; no new submits until the store takes it"
        )
        recorded: JobRow | None = None
        deadline = time.monotonic() + _STORE_PATIENCE
        try:
            delay, longest = _RECORD_RETRY
            while recorded is None:
                if journaled and time.monotonic() > deadline:  # safe on disk: the next run takes it
                    raise StoreError(
                        f"stopped: the store refused request {request_id} of job {row.key[:10]} "
                        f"for {_STORE_PATIENCE:.0f} s ({_text(refused)}); it is kept in "
                        f"{self._journal.path}, and the next run records it"
                    )
                await anyio.sleep(delay)
                delay = min(delay * 2, longest)
                journaled = journaled or self._journal_append(row, request_id)
                recorded = self._record_again(row.key, request_id)
        finally:
            if recorded is None:  # cancelled (a second Ctrl-C): one last try, then say the id
                recorded = self._record_again(row.key, request_id)
            if recorded is None and not journaled and not self._journal_append(row, request_id):
                self._say(
                    f"job {row.key[:10]} is paid, but neither the store nor the journal took its "
                    f"request id {request_id} (the next run marks the job unknown)"
                )
        del self._unrecorded[row.key]
        if journaled:
            try:
                self._journal.forget([(row.key, request_id)])
            except (OSError, StoreError) as exc:  # the next start drops it: the job is queued
                log.warning("journal %s: %s", self._journal.path, exc)
        self._say(f"job {row.key[:10]}: request {request_id} recorded; submitting resumes")
        self._wake()
        return recorded

    def _record_again(self, key: str, request_id: str) -> JobRow | None:
        """One more try at recording the request id; None while the store still refuses."""
        try:
            return self._move(key, JobState.QUEUED, request_id=request_id)
        except TransitionError:
            # A write reported failed may still have landed (an I/O error at commit).
            row = self.store.get(key)
            if row is None or row.request_id != request_id:
                raise
            return row
        except StoreError as exc:
            log.warning(
                "job %s: the store still cannot record request %s: %s", key[:10], request_id, exc
            )
            return None

    def _journal_append(self, row: JobRow, request_id: str) -> bool:
        try:
            self._journal.append(
                row.key, request_id, model=row.model_id, attempt=row.attempts, run=self.store.run_id
            )
        except (OSError, StoreError) as exc:
            log.warning("journal %s cannot be written: %s", self._journal.path, exc)
            return False
        return True

    def _after_refusal(self, exc: ComfysweepError) -> tuple[JobState, str | None]:
        """Where a job goes when its submit gave no request id, and why to stop submitting."""
        text = _text(exc)
        if isinstance(exc, OutcomeUnknown):  # sent, answer lost: may exist and be billed
            return JobState.UNKNOWN, None
        if isinstance(exc, AuthError | BalanceError):  # not created; would hit every job
            return JobState.PENDING, text
        if isinstance(exc, ModelNotFound):
            return JobState.FAILED, text
        if isinstance(exc, ValidationFailed):
            first = not self._any_submit_ok
            return JobState.FAILED, f"the first job was refused: {text}" if first else None
        if isinstance(exc, ServerError) and exc.status_code in (429, 408):  # refused, not created
            # The client paused for the API (and shrank the submits in flight): back to pending,
            # and sent again; only a throttling that outlasts several such rounds stops the run.
            self._refused_in_a_row += 1
            if self._refused_in_a_row < _REFUSED_IN_A_ROW:
                return JobState.PENDING, None
            return JobState.PENDING, f"the API keeps refusing: {text}"
        if isinstance(exc, TransportError):  # provably never sent (the client retried already)
            return JobState.PENDING, f"the API is unreachable: {text}"
        if isinstance(exc, ApiError) and not isinstance(exc, ServerError):
            return JobState.FAILED, None
        return JobState.UNKNOWN, None  # anything else: the outcome is open, never resend

    # -- polling ----------------------------------------------------------------------------

    async def _track(self, row: JobRow, first_delay: float) -> None:
        """Poll a job's result until it ends, then hand it to the downloader.

        Only the result endpoint is asked (it answers the state before the end), when the
        planner says (pacing.py): one call a poll, and the last poll is the result itself.
        ``first_delay`` 0 polls at once (a job resumed from an earlier run), unless the job is
        too young to have ended.
        """
        assert row.request_id is not None
        polls, failures = self.polls, 0
        begun = self._started.get(row.key, _since(row.submitted_at))
        if not first_delay and not polls.may_have_ended(time.monotonic() - begun):
            first_delay = 1.0  # resumed, too young to have ended: its planned first poll
        queued: tuple[int, float] | None = None  # the last queue position seen, and when
        try:
            while True:
                if first_delay > 0 or failures:
                    queue = queued[0] if queued else None
                    age = time.monotonic() - begun
                    # Woken sooner by news (the scout's job ended): this one may be done too.
                    await polls.sleep(polls.delay(row.key, age, queue))
                first_delay = 1.0
                try:
                    result = await self._poll(row.request_id)
                except RequestNotFound as exc:
                    self._release(row.key, ended=False)
                    await self._commit(
                        row.key,
                        JobState.LOST,
                        detail=f"the API no longer knows request {row.request_id}: {_text(exc)}",
                    )
                    return
                except ComfysweepError as exc:
                    failures += 1
                    log.warning("polling %s failed (%d in a row): %s", row.key[:10], failures, exc)
                    if failures >= _POLL_GIVE_UP:
                        self._release(row.key, ended=False)
                        self.stop(f"polling keeps failing, run again to resume: {_text(exc)}")
                        return
                    continue
                if result is None:
                    continue  # the job is there, its result not yet
                failures = 0
                queued = self._queue_seen(queued, result)
                if result.state is RemoteState.RUNNING and row.state is JobState.QUEUED:
                    row = await self._commit(row.key, JobState.RUNNING)
                elif result.state is RemoteState.SUCCEEDED:
                    waited = time.monotonic() - begun  # no job takes longer: a server
                    took = server_duration(result.raw)  # clock ahead is not believed
                    polls.observe(waited if took is None else min(took, waited))
                if await self._settle(row, result):
                    return
        finally:
            polls.leave(row.key)

    async def _poll(self, request_id: str) -> Result | None:
        """The job's result; None while the result endpoint answers 404 but the status endpoint
        knows the job (a server that shows a result only at the end): never lost for that."""
        try:
            return await self.client.result(request_id)
        except RequestNotFound as exc:
            status = await self.client.status(request_id)  # 404 here too: lost indeed
            if status.state.terminal or status.state is RemoteState.COMPLETED:
                raise ServerError(f"{_text(exc)} (its status: {status.state})") from exc
            return None

    def _queue_seen(
        self, before: tuple[int, float] | None, result: Result
    ) -> tuple[int, float] | None:
        """The job's queue position now (None once it left the queue); teaches the planner."""
        position = integer(result.raw.get("queue_position"))
        if result.state is not RemoteState.QUEUED or position is None:
            return None
        now = time.monotonic()
        if before is not None:
            self.polls.observe_queue(before[0] - position, now - before[1])
        return position, now

    async def _settle(self, row: JobRow, result: Result) -> bool:
        """Record a final result; True when the job left the remote side."""
        if result.state in _SETTLES and result.cost is None and not self._cost_said:
            self._cost_said = True  # once a run: the store keeps each such job's estimate
            self._say(
                f"job {row.key[:10]}: the API reported no valid cost; the budget counts its "
                "estimate instead (and does so for every such job)"
            )
        if result.state is RemoteState.SUCCEEDED:
            if not result.urls:
                self._release(row.key, cost=result.cost)
                no_url = "succeeded without any output URL"  # billed all the same
                await self._commit(row.key, JobState.FAILED, cost=result.cost, error=no_url)
                return True
            # Counted before the slot frees (the commit lets other tasks run): no new job goes
            # out before this one's outputs are downloaded.
            self._download_backlog += 1
            self._release(row.key, cost=result.cost)
            try:
                # Held in memory while the store refuses it; a run that dies first leaves the job
                # queued or running with its request id, and the next run asks for its result.
                row = await self._commit(
                    row.key,
                    JobState.SUCCEEDED,
                    cost=result.cost,
                    result={"urls": result.urls, "raw": result.raw},
                )
            except BaseException:
                self._download_backlog -= 1
                raise
            self._ended(None)
            self._spawn_download(row)
            return True
        if result.state is RemoteState.FAILED:
            message = result.error_message or "the job failed"
            self._retrying += 1  # counted before the slot frees: the submitter waits for it
            try:
                # The slot frees once the failure is written and counted (max_failures may stop
                # the run) and a retried job is pending again: it keeps its place in the order.
                try:
                    row = await self._commit(
                        row.key,
                        JobState.FAILED,
                        cost=result.cost,
                        error=result.error,
                        detail=message,
                    )
                    self._ended(message)
                    await self._retry(row, message)
                finally:
                    self._release(row.key, cost=result.cost)
            finally:
                self._retrying -= 1
                self._wake()
            return True
        if result.state is RemoteState.CANCELLED:
            self._release(row.key, cost=result.cost)
            await self._commit(row.key, JobState.CANCELLED, cost=result.cost)
            return True
        return False

    async def _retry(self, row: JobRow, message: str) -> None:
        """``retries``: a job the API reported failed goes back to pending, a new paid attempt.

        ``attempts`` counts every submit of the job (this run's and earlier ones'), so a job is
        retried at most ``retries`` times in all. A stopping run retries nothing.
        """
        allowed = self.options.retries
        if row.attempts > allowed or self.stopping:
            return
        await self._commit(
            row.key,
            JobState.PENDING,
            detail=f"retry {row.attempts} of {allowed}: the API reported it failed: {message}",
        )
        self._requeued += 1

    def _ended(self, error: str | None) -> None:
        """Count a job that ended (failed with ``error``); stop when ``max_failures`` is reached."""
        verdict = self._failures.ended(error)
        if verdict is not None:
            self.stop(verdict, kind="failures")

    # -- downloading ------------------------------------------------------------------------

    def _spawn_download(self, row: JobRow) -> None:
        assert self._jobs is not None
        self._jobs.start_soon(self._download, row)

    async def _download(self, row: JobRow) -> None:
        try:
            async with self._downloads:
                began = time.monotonic()
                self._downloading += 1
                try:
                    await self._fetch_outputs(row)
                finally:
                    self._downloading -= 1
                self.download_times.append(time.monotonic() - began)
        finally:
            self._download_backlog -= 1
            self._wake()

    async def _fetch_outputs(self, row: JobRow) -> None:
        urls = list((row.result or {}).get("urls", []))
        done = {o["url"]: o for o in row.outputs if self.folder.has(o)}
        outputs: list[dict[str, Any]] = []
        refreshed = False
        n = invalid = 0
        while n < len(urls):
            url = urls[n]
            if url in done:
                outputs.append(done[url])
                n += 1
                continue
            tmp = self.folder.temp_path(row.key, n)
            try:
                got = await self.client.download(url, tmp)
                what = f"the download of output {n + 1} of job {row.key[:10]}"
                model = self.folder.model_of(row.model_id)
                check = functools.partial(
                    self.folder.verify, content_type=got.content_type, model=model
                )
                # Reading a big file's header may wait on the disk; an image or audio file is
                # decoded whole: both off the event loop.
                if got.size > _VERIFY_INLINE or model.output_kind != "video":
                    ext = await anyio.to_thread.run_sync(check, tmp, row.inputs, url, what)
                else:
                    ext = check(tmp, row.inputs, url, what)
                name = self.folder.output_name(row, n, len(urls), url, ext=ext)
                path = self.folder.final_name(name, row.key)

                # The name is the job's before the file takes it: a kill between the two leaves a
                # file the next run overwrites, not an orphan beside a second copy.
                def record(path: str, done: list[dict[str, Any]] = outputs, url: str = url) -> None:
                    self.store.update(row.key, outputs=[*done, {"url": url, "path": path}])

                await self._update(row.key, outputs=[*outputs, {"url": url, "path": path}])
                # A fallback name (a file appeared at this one meanwhile) is recorded by place().
                path = self.folder.place(tmp, path, row.key, record)
            except OutputExpired as exc:
                fresh = None if refreshed else await self._fresh_urls(row)
                refreshed = True
                if not fresh:
                    await self._commit(
                        row.key, JobState.EXPIRED, detail=f"output expired: {_text(exc)}"
                    )
                    return
                urls, outputs, n = fresh, [], 0
                continue
            except OutputInvalid as exc:
                invalid += 1
                log.warning("%s", exc)
                if invalid < _INVALID_TRIES:
                    continue  # a cut connection is usually not cut again
                self._note(row.key, error=f"download failed: {_text(exc)}")
                self._say(f"job {row.key[:10]}: {_text(exc)}; run again to download it again")
                return
            except DownloadError as exc:
                self._note(row.key, error=f"download failed: {_text(exc)}")
                if isinstance(exc.__cause__, OSError):
                    # Our disk refused the file: every further job would be paid for nothing.
                    self.stop(
                        f"stopped submitting: {_text(exc)}; paid outputs stay downloadable, "
                        "run again once the folder can be written",
                        fatal=True,
                    )
                    return
                self._say(f"job {row.key[:10]}: download failed, run again to retry: {_text(exc)}")
                return
            except (OSError, ResultsError) as exc:
                with contextlib.suppress(OSError):  # a read-only disk refuses even this
                    tmp.unlink(missing_ok=True)
                self._note(row.key, error=f"cannot write output: {exc}")
                self.stop(
                    f"stopped submitting: cannot write to {self.folder.root}: {exc}", fatal=True
                )
                return
            outputs.append({"url": url, "path": path, "size": got.size, "sha256": got.sha256})
            await self._update(row.key, outputs=outputs)
            n += 1
        await self._commit(row.key, JobState.DONE, outputs=outputs, error=None)

    async def _fresh_urls(self, row: JobRow) -> list[str] | None:
        if row.request_id is None:
            return None
        try:
            result = await self.client.result(row.request_id)
        except ComfysweepError as exc:
            log.warning("refreshing the result of %s failed: %s", row.key[:10], exc)
            return None
        if result.state is not RemoteState.SUCCEEDED or not result.urls:
            return None
        if result.urls == list((row.result or {}).get("urls", [])):
            return None
        await self._update(row.key, result={"urls": result.urls, "raw": result.raw})
        return result.urls

    # -- bookkeeping ------------------------------------------------------------------------

    def _move(self, key: str, to: JobState, *, detail: str | None = None, **fields: Any) -> JobRow:
        row = self.store.transition(key, to, detail=detail, **fields)
        if to is JobState.PENDING and key in self._cancel_keys:  # back, but cancelled meanwhile
            row = self.store.transition(key, JobState.CANCELLED, detail="cancelled on request")
        return self._moved(key, to, row, detail)

    async def _amove(
        self, key: str, to: JobState, *, detail: str | None = None, **fields: Any
    ) -> JobRow:
        """``_move`` through the group commit: committed with the other jobs' writes of now."""
        row = await self._writes.write(Write(key, to, fields, detail))
        if to is JobState.PENDING and key in self._cancel_keys:  # back, but cancelled meanwhile
            row = await self._writes.write(Write(key, JobState.CANCELLED, {}, _CANCELLED))
        assert row is not None
        return self._moved(key, to, row, detail)

    def _moved(self, key: str, to: JobState, row: JobRow, detail: str | None) -> JobRow:
        """The runner's side of a move the store committed."""
        if row.state in (JobState.CANCELLED, JobState.DONE):  # a request carried out: a later
            self._cancel_keys.discard(key)  # `retry` (PostgreSQL, beside this run) is new
        self._dirty = True
        self._last_change = time.monotonic()
        self._stall_level = 1
        rid = f" ({row.request_id})" if row.request_id else ""
        log.info("job %s%s -> %s%s", key[:10], rid, to, f": {detail}" if detail else "")
        return row

    async def _commit(
        self, key: str, to: JobState, *, detail: str | None = None, **fields: Any
    ) -> JobRow:
        """``_move``, waiting out a store that refuses the write for a while (``_persist``)."""

        def landed() -> JobRow | None:  # a write reported failed may still have landed
            row = self.store.get(key)
            return row if row is not None and row.state is to else None

        return await self._persist(
            f"job {key[:10]} -> {to}",
            lambda: self._amove(key, to, detail=detail, **fields),
            landed,
        )

    async def _update(self, key: str, **fields: Any) -> None:
        await self._persist(f"job {key[:10]}", lambda: self._writes.write(Write(key, None, fields)))

    def _note(self, key: str, **fields: Any) -> None:
        """A remark on a job (its last error): worth one try, never worth stopping for."""
        try:
            self.store.update(key, **fields)
        except StoreError as exc:
            log.warning("job %s: the store did not take a note: %s", key[:10], exc)

    async def _persist(
        self,
        what: str,
        write: Callable[[], Awaitable[T]],
        landed: Callable[[], T | None] | None = None,
    ) -> T:
        """``write()``, tried again with backoff while the store refuses it; new submits wait.

        A store another program holds (busy) gets ``_STORE_PATIENCE``, any other refusal (a full
        disk) ``_STORE_GLITCH``; then the run stops with one line. Nothing paid is lost meanwhile:
        the job's state in the store stays the last one recorded, and the next run resumes there.
        """
        refused: StoreError | None = None
        delay, longest = _RECORD_RETRY
        deadline = 0.0
        taken = False
        try:
            while True:
                try:
                    written = await write()
                except TransitionError:
                    found = None if refused is None or landed is None else landed()
                    if found is None:
                        raise
                    written = found
                except StoreError as exc:
                    if refused is None:
                        deadline = self._store_refused(exc)
                    refused = exc
                    if time.monotonic() >= deadline:
                        if isinstance(exc, StoreBusyError):
                            raise StoreBusyError(
                                f"{_text(exc)} for {_STORE_PATIENCE:.0f} s; stopped, run again "
                                "once no other program holds it (nothing paid is lost)"
                            ) from exc
                        raise
                    log.warning("%s: the store refuses the write, trying again: %s", what, exc)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, longest)
                    continue
                taken = True
                return written
        finally:
            if refused is not None:
                self._store_waiting -= 1
                if self._store_waiting == 0 and self._store_said and taken:
                    self._store_said = False
                    self._say("the store takes writes again; submitting resumes")
                self._wake()

    def _store_refused(self, exc: StoreError) -> float:
        """Count a write that now waits for the store; the deadline of its patience."""
        self._store_waiting += 1
        if not isinstance(exc, StoreBusyError):
            return time.monotonic() + _STORE_GLITCH
        if not self._store_said:
            self._store_said = True
            self._say(
                f"waiting for the store: {_text(exc)} (another program holds it); no new "
                f"submits until it takes writes again, for up to {_STORE_PATIENCE:.0f} s"
            )
        return time.monotonic() + _STORE_PATIENCE

    def _release(self, key: str, cost: float | None = None, *, ended: bool = True) -> None:
        """A job left the remote side: free its slot (the store books what it cost). Only a job
        that ``ended`` says how long jobs take (not one given up on, or forgotten by the API)."""
        self._remote -= 1
        started = self._started.pop(key, None)
        if started is not None and ended:
            self.durations.append(time.monotonic() - started)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self._changed.is_set():  # one event for every waiter: replace it only once used
                self._changed = anyio.Event()
            await self._changed.wait()

    async def _ticker(self, snapshot: Snapshot) -> None:
        ticks = 0
        while True:
            await anyio.sleep(self.options.tick)
            ticks += 1
            self._read_mail()
            if not self.store.is_sqlite and ticks % _ADOPT_EVERY == 0:
                self._take_over()
            if self.progress is not None:  # counting is a query: only for someone to see
                snapshot.counts = self.store.counts(in_spec=True)
                snapshot.spent_usd = self.store.spent()
                self.progress.update(snapshot)
            now = time.monotonic()
            self._check_stall(now)
            self._write_manifest()  # the lines of the jobs that moved since the last tick

    def _cancelled(self, key: str) -> bool:
        """Whether a cancel request covers ``key``, the mailbox read first: checked just before
        a job's POST, so a job a request names by then is never sent."""
        self._read_mail()
        return key in self._cancel_keys

    def _read_mail(self) -> None:
        """Act on stop and cancel requests from another shell (orchestrator/control.py)."""
        if self._mailbox is None or self._jobs is None:
            return
        try:
            requests = self._mailbox.take()
        except StoreError as exc:  # a glitch: the next tick reads again
            log.warning("reading the controls mailbox: %s", exc)
            return
        for request in requests:
            if request.kind == "stop":
                self.stop(
                    f"stop requested from another shell ({request.requested_by}): no new "
                    "submits; waiting for jobs in flight",
                    kind="interrupted",
                )
                self._answer(
                    request.id,
                    f"draining: {self._remote} job(s) in flight finish; "
                    f"`{self.command}` brings the rest back",
                )
                if self.options.abort_on_stop:  # `--abort`: as on a first Ctrl-C
                    self._jobs.start_soon(self._cancel_queued)
            elif request.kind == "cancel" and self._jobs is not None:
                self._cancel_keys.update(request.keys or ())
                self._jobs.start_soon(self._cancel_requested, request)

    async def _cancel_requested(self, request: control.Control) -> None:
        """A cancel request's jobs in flight: never sent, cancelled remotely, or billed."""
        keys = set(request.keys or ())
        try:
            rows = [r for r in self.store.jobs(control.IN_FLIGHT) if r.key in keys]
            # Put back to pending before this run read the request (a refused POST, a stop's
            # hold-back): cancelled now, or the next run would send them.
            rest = sorted(keys - {r.key for r in rows})
            back, states, _ = self.store.cancel_pending(rest, request=False)
            ended = (JobState.CANCELLED, JobState.DONE)  # carried out: a later `retry` is new
            self._cancel_keys.difference_update(k for k, s in states.items() if s in ended)
            self._cancel_keys.difference_update(back)
        except StoreError as exc:  # its jobs are in the cancel set: at least none is sent
            self._answer(request.id, f"the jobs could not be read: {_text(exc)}")
            return
        queued, running, not_sent, sending = control.split_in_flight(rows, self._sending)
        not_sent += len(back)
        report = await cancel_queued(self.client, queued)  # the trackers record the new states
        billed = len(running) + report.not_cancellable
        outcome = control.cancel_outcome(not_sent, sending, report.cancelled, billed, report.failed)
        self._say(f"cancel requested from another shell ({request.requested_by}): {outcome}")
        self._answer(request.id, outcome)

    def _answer(self, control_id: int, outcome: str) -> None:
        try:
            self.store.answer_control(control_id, outcome)
        except StoreError as exc:
            log.warning("answering control request %d: %s", control_id, exc)

    def _check_stall(self, now: float) -> None:
        """Say once when no job has changed state for ``stall_after``, again at 4x and 16x ...

        A download under way, or a write waiting for a busy store (said on its own), is no stall.
        """
        if self._downloading or self._store_waiting:
            self._last_change = now
            return
        quiet = self.options.stall_after * self._stall_level
        if now - self._last_change < quiet:
            return
        self._stall_level *= 4
        text = (
            f"stalled: no job has changed state for {_span(quiet)} "
            f"({self._remote} on the remote side, {self._download_backlog} downloading); "
            "still waiting"
        )
        self._say(text)
        self._notify("stall", text)

    def _take_over(self) -> None:
        """PostgreSQL: adopt the jobs of runners that died (their reservations stay booked)."""
        if self._jobs is None:
            return
        try:
            self._adopt_submitting()
            self._resume(self._jobs)
        except StoreError as exc:  # a glitch: the next look tries again
            log.warning("looking for a dead runner's jobs: %s", exc)

    def _write_manifest(self, *, whole: bool = False) -> None:
        """Append the jobs that moved (each tick), or write both files whole (``whole``: the
        run's end); orphaned jobs too: one a spec edit left in flight is paid, its files listed."""
        self._dirty = False
        try:
            if whole:
                self.manifest.finish()
            else:
                self.manifest.write()
        except StoreError as exc:  # a glitch reading the jobs: the next tick appends them
            if whole:
                raise
            log.warning("the manifest waits for the store: %s", exc)
        except OSError as exc:  # a full or read-only folder; the store keeps every job safe
            self.stop(
                f"stopped submitting: cannot write the manifest in {self.folder.root}: "
                f"{exc.strerror or exc}; run again once the folder can be written",
                fatal=True,
            )

    async def _signals(self, outer: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self._interrupts += 1
                if self._interrupts > 1:
                    self._say("interrupted again: exiting now; `comfysweep run` resumes")
                    outer.cancel_scope.cancel()
                    return
                self.stop(
                    "interrupted: no new submits; waiting for jobs in flight "
                    "(Ctrl-C again to exit now, the next run resumes)",
                    kind="interrupted",
                )
                if self.options.abort_on_stop:
                    await self._cancel_queued()

    async def _cancel_queued(self) -> None:
        # A job whose POST is under way, or whose request id waits in a group commit, is
        # cancelled by its own submit once recorded (``_submit``); the rest from the store.
        self._abort_sending |= self._sending
        mine = [
            r
            for r in self.store.jobs(_IN_FLIGHT)
            if r.run_id == self.store.run_id and r.key not in self._abort_sending
        ]
        report = await cancel_queued(self.client, mine)  # the trackers record what changed
        for failure in report.failed:
            log.warning("cancelling %s", failure)
        if report.not_cancellable:
            self._say(
                f"{report.not_cancellable} job(s) already running cannot be cancelled "
                "and will be billed"
            )

    def _notify(self, event: str, text: str) -> None:
        """Tell the notifier (if any) of ``event`` ("stall", "budget"); never fails the run."""
        if self.on_event is None:
            return
        try:
            self.on_event(event, text)
        except Exception as exc:  # a notifier is never worth a paid run
            log.warning("notify %s: %s", event, exc)

    def _say(self, text: str) -> None:
        self._messages.append(text)
        log.info("%s", text)
        if self.progress is not None:
            self.progress.message(text)


@dataclass(frozen=True)
class CancelReport:
    """What cancelling did: queued jobs cancelled, and jobs already running (billed anyway)."""

    cancelled: int
    not_cancellable: int
    failed: list[str]
    keys: tuple[str, ...] = ()  # the jobs the API cancelled


async def cancel_queued(client: ModelApiClient, rows: Iterable[JobRow]) -> CancelReport:
    """Ask the API to cancel each queued job; running jobs cannot be cancelled on RunComfy."""
    keys: list[str] = []
    running, failed = 0, []
    for row in rows:
        if row.state is JobState.RUNNING or row.request_id is None:
            running += 1
            continue
        try:
            outcome = await client.cancel(row.request_id)
        except ComfysweepError as exc:
            failed.append(f"{row.key[:10]}: {exc}")
            continue
        if outcome.cancelled:
            keys.append(row.key)
        else:
            running += 1
    return CancelReport(len(keys), running, failed, tuple(keys))


_CANCELLED = "cancelled on request"


def _ours(group: BaseExceptionGroup[BaseException]) -> ComfysweepError | None:
    """The first error when all the task group's are ours (a full store, say), else None.

    A store that refuses a write stops every task; the user sees that one line, not a group.
    """
    ours, rest = group.split(ComfysweepError)
    while ours is not None and rest is None:
        first = ours.exceptions[0]
        if isinstance(first, ComfysweepError):
            return first
        ours = first if isinstance(first, BaseExceptionGroup) else None
    return None


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error(exc: ApiError) -> Any:
    return {"error_code": exc.error_code, "message": str(exc), "detail": exc.detail}


def _since(at: datetime | None) -> float:
    """The monotonic moment of ``at`` (a job submitted by an earlier run), never later than now:
    a resumed job is as old as its submit, not as its adoption."""
    now = time.monotonic()
    if at is None:
        return now
    try:
        ago = (datetime.now(UTC) - at).total_seconds()
    except TypeError:  # a naive time from an older store: age unknown
        return now
    return now - max(ago, 0.0)
