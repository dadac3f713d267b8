"""Group commit: the runner's writes of many jobs, committed together in one transaction.

A job's coroutine hands its write (a transition, or new field values) to ``GroupCommit.write``
and resumes only once that write is committed. The first writer of a batch leads it: it lets the
tasks that are ready run first (a checkpoint), so the answers that came in together join it, then
commits the whole batch inline, on the event loop, with one ``Store.apply``: one BEGIN, one COMMIT
(one fsync when durable), where each write used to pay its own. No thread hop: the store's one
connection is never used by two threads, and no other code waits on a lock for it.

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
    __slots__ = ("done", "error", "row")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.row: JobRow | None = None
        self.error: BaseException | None = None

    def outcome(self) -> JobRow | None:
        if self.error is not None:
            raise self.error
        return self.row


class GroupCommit:
    """Batches the writes handed to it while its leader waits one checkpoint; see the module."""

    def __init__(self, store: Store, *, joins: int = 1) -> None:
        self.store = store
        self.joins = joins  # checkpoints the leader waits for others to join
        self._queue: list[tuple[Write, _Waiter]] = []
        self._leading = False
        self.batches = 0  # transactions committed or refused (for benchmarks and tests)
        self.writes = 0

    async def write(self, item: Write) -> JobRow | None:
        """Commit ``item`` with whatever else is written now; its row (None for an update)."""
        waiter = _Waiter()
        self._queue.append((item, waiter))
        if self._leading:
            await waiter.done.wait()  # its batch is flushed even if this task is cancelled
            return waiter.outcome()
        self._leading = True
        try:
            # Shielded: a leader cancelled here still flushes the writes of those who joined.
            with anyio.CancelScope(shield=True):
                for _ in range(self.joins):
                    await anyio.lowlevel.checkpoint()
        finally:
            self._leading = False
            batch, self._queue = self._queue, []
            self._flush(batch)
        return waiter.outcome()

    def _flush(self, batch: list[tuple[Write, _Waiter]]) -> None:
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
        finally:
            for _, waiter in batch:
                waiter.done.set()


def _own(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one writer (each raises its own, with its own traceback)."""
    try:
        mine = copy.copy(exc)
    except Exception:  # an exception that cannot be copied: shared, then
        return exc
    mine.__cause__ = exc.__cause__
    return mine
