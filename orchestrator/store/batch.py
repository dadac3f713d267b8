"""Group commit: the runner's writes of many jobs, committed together in one transaction.

A job's coroutine hands its write (a transition, or new field values) to ``GroupCommit.write``
and resumes only once that write is committed. The first writer of a batch leads it: it lets the
tasks that are ready run first (a few checkpoints), so the answers that came in together join it,
then commits the whole batch inline, on the event loop, with one ``Store.apply``: one BEGIN, one
COMMIT (one fsync when durable), where each write used to pay its own. No thread hop (measured
slower here, benchmarks/store_path.py): the store's one connection stays on the loop's thread.
Writes of one job keep their order: its coroutine waits for each before it makes the next.

What is refused is told to the writer it concerns only: a transition the state machine refuses
(TransitionError) fails that write alone and the rest commit; a store that refuses the
transaction (busy, disk full) fails every write of the batch, and each writer's own patience
(Runner._persist) tries again. A batch moving any job to ``submitting`` or ``queued`` is durable
(synchronous=FULL on SQLite), so a request id is on disk before its writer goes on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from orchestrator.store.states import JobState

if TYPE_CHECKING:
    from orchestrator.store.rows import JobRow
    from orchestrator.store.store import Store

__all__ = ["GroupCommit", "Write"]

# Checkpoints a batch's leader lets pass before it commits. Measured on a 400-job run at
# concurrency 64: 1 made batches of 2.1 writes on average (972 transactions), 3 made 3.6 (558).
JOINS = 3


@dataclass(frozen=True, slots=True)
class Write:
    """One job's write: a move to ``to`` (as Store.transition), or with ``to`` None only its
    ``fields`` set (as Store.update)."""

    key: str
    to: JobState | None
    fields: Mapping[str, Any] = field(default_factory=dict)
    detail: str | None = None
    expect: frozenset[JobState] | None = None


class _Waiter:
    __slots__ = ("done", "error", "finished", "row")

    def __init__(self) -> None:
        self.done = anyio.Event()  # set once written, or when this writer is to lead a batch
        self.finished = False
        self.row: JobRow | None = None
        self.error: BaseException | None = None

    def outcome(self) -> JobRow | None:
        if self.error is not None:
            raise self.error
        return self.row


class GroupCommit:
    """Batches the writes handed to it while a batch is gathered or committed; see the module."""

    def __init__(self, store: Store, *, joins: int = JOINS) -> None:
        self.store = store
        self.joins = joins  # checkpoints a leader waits for others to join
        self._queue: list[tuple[Write, _Waiter]] = []
        self._leading = False
        self.batches = 0  # transactions committed or refused (for benchmarks and tests)
        self.writes = 0

    async def write(self, item: Write) -> JobRow | None:
        """Commit ``item`` with whatever else is written now; its row (None for an update)."""
        waiter = _Waiter()
        self._queue.append((item, waiter))
        # Shielded: a writer cancelled meanwhile still sees its write through (it may be the
        # request id of a paid job), and a leader never leaves the others' writes behind.
        with anyio.CancelScope(shield=True):
            if self._leading:
                await waiter.done.wait()
                if waiter.finished:
                    return waiter.outcome()
            self._leading = True  # this writer leads the batch its own write is in
            try:
                for _ in range(self.joins):
                    await anyio.lowlevel.checkpoint()
                batch, self._queue = self._queue, []
                try:
                    await self._commit(batch)
                finally:
                    for _, other in batch:  # on the loop: anyio's events are not thread-safe
                        other.finished = True
                        other.done.set()
            finally:
                if self._queue:  # written meanwhile: their first writer leads the next batch
                    self._queue[0][1].done.set()
                else:
                    self._leading = False
        return waiter.outcome()

    async def _commit(self, batch: list[tuple[Write, _Waiter]]) -> None:
        """Commit ``batch`` inline: measured faster than one thread hop per batch, with an fsync
        of ~0.2 ms (benchmarks/store_path.py: its "threaded" side overrides this)."""
        self._apply(batch)

    def _apply(self, batch: list[tuple[Write, _Waiter]]) -> None:
        """One transaction for ``batch``; each writer's outcome put on its waiter."""
        self.batches += 1
        self.writes += len(batch)
        try:
            outcomes = self.store.apply([item for item, _ in batch])
        except BaseException as exc:  # the transaction as a whole: every writer hears it
            for _, waiter in batch:
                waiter.error = _own(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, waiter), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    waiter.error = outcome
                else:
                    waiter.row = outcome


def _own(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one writer (each raises its own, with its own traceback)."""
    try:
        mine = copy.copy(exc)
    except Exception:  # an exception that cannot be copied: shared, then
        return exc
    mine.__cause__ = exc.__cause__
    return mine
