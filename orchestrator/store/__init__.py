"""The job store: tables, the state machine and every write, on SQLite or PostgreSQL.

``from orchestrator.store import Store, JobState, JobRow, TRANSITIONS`` is the public surface.
"""

from __future__ import annotations

from orchestrator.store.rows import Event, JobLike, JobRow, SyncGuard, SyncResult
from orchestrator.store.states import FINAL, RETRYABLE, TRANSITIONS, JobState, allowed_from
from orchestrator.store.store import Store

__all__ = [
    "FINAL",
    "RETRYABLE",
    "TRANSITIONS",
    "Event",
    "JobLike",
    "JobRow",
    "JobState",
    "Store",
    "SyncGuard",
    "SyncResult",
    "allowed_from",
]
