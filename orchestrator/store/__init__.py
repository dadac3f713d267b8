"""The job store: tables, the state machine and every write, on SQLite or PostgreSQL.

``from orchestrator.store import Store, JobState, JobRow, TRANSITIONS`` is the public surface.
"""

from __future__ import annotations

from orchestrator.store.books import Attempt, Ledger
from orchestrator.store.rows import Event, JobLike, JobRow, SyncGuard, SyncResult
from orchestrator.store.schema import STORE_FILE
from orchestrator.store.states import FINAL, RETRYABLE, TRANSITIONS, JobState, allowed_from
from orchestrator.store.store import Claim, Claims, Store

__all__ = [
    "FINAL",
    "RETRYABLE",
    "STORE_FILE",
    "TRANSITIONS",
    "Attempt",
    "Claim",
    "Claims",
    "Event",
    "JobLike",
    "JobRow",
    "JobState",
    "Ledger",
    "Store",
    "SyncGuard",
    "SyncResult",
    "allowed_from",
]
