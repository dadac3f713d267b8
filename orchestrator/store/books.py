"""The budget ledger's bookkeeping, done inside the store's own transactions.

Each submit attempt reserves its estimate when it is claimed (Store.claim_within checks the cap
in that same transaction). A state change then does to the job's open attempt what it means for
the money, in the transaction that records it, so no caller can forget it:

- submitting -> pending or failed: released (never sent, or refused and not created);
- queued/running -> succeeded/failed/cancelled: settled at the API's cost when valid, else at the
  estimate;
- submitting -> queued, anything -> unknown or lost: stays reserved (the job may be billed);
- unknown/lost -> pending (`retry`): charged at its estimate, since it may have been billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from orchestrator.budget import charge
from orchestrator.store import sql
from orchestrator.store.states import JobState

__all__ = ["Attempt", "Ledger", "Money", "book", "read_ledger"]

_S = JobState
REMOTE = frozenset({_S.SUBMITTING, _S.QUEUED, _S.RUNNING})
_SETTLED = frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED})
_MAYBE_BILLED = frozenset({_S.UNKNOWN, _S.LOST})


@dataclass(frozen=True)
class Ledger:
    """The budget's totals: spent (settled), reserved (open attempts), the cap, jobs in flight."""

    spent_usd: float
    reserved_usd: float
    cap_usd: float | None
    in_flight: int
    concurrency: int | None = None

    @property
    def committed_usd(self) -> float:
        return self.spent_usd + self.reserved_usd


@dataclass(frozen=True)
class Attempt:
    """One submit attempt of a job, as the attempts table keeps it."""

    job_key: str
    attempt: int
    run_id: int | None
    request_id: str | None
    estimate_usd: float
    cost_usd: float | None
    charge_usd: float | None
    outcome: str | None
    opened_at: datetime
    closed_at: datetime | None

    @classmethod
    def from_row(cls, m: Mapping[Any, Any]) -> Attempt:
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


def read_ledger(conn: Connection, *, lock: bool = False) -> Ledger:
    """The ledger's row; ``lock``: held until the transaction ends (PostgreSQL's FOR UPDATE)."""
    return ledger_of(conn.execute(sql.LEDGER_LOCK if lock else sql.LEDGER_GET).mappings().one())


def ledger_of(m: Mapping[Any, Any]) -> Ledger:
    """The Ledger of the ledger row's columns."""
    return Ledger(
        spent_usd=float(m["spent_usd"]),
        reserved_usd=float(m["reserved_usd"]),
        cap_usd=m["cap_usd"],
        in_flight=int(m["in_flight"]),
        concurrency=m["concurrency"],
    )


def book(
    conn: Connection, row: Mapping[Any, Any], fields: Mapping[str, Any], now: datetime
) -> Money:
    """Book a transition's money on the job's attempt; returns what the ledger's totals move by.

    ``row`` is the job as the UPDATE returned it (``prev_state`` is where it came from), and
    ``fields`` what the caller set (a settled result's ``cost``). The caller moves the ledger (one
    LEDGER_MOVE for a whole batch of transitions, in the same transaction).
    """
    prev, to = _S(row["prev_state"]), _S(row["state"])
    flight = (to in REMOTE) - (prev in REMOTE)
    if to in (_S.QUEUED, _S.UNKNOWN, _S.LOST):  # never a close: the attempt is only noted
        note = {"p_key": row["key"], "p_rid": row["request_id"], "p_outcome": str(to)}
        conn.execute(sql.ATTEMPT_NOTE_OPEN, note)
        return Money(flight=flight)
    if not _closes_attempt(prev, to):  # running, done, expired...: no money moves, no read
        return Money(flight=flight)
    spent = 0.0
    valid: bool | None = None
    found = conn.execute(sql.ATTEMPT_OPEN, {"p_key": row["key"]}).first()
    close: dict[str, Any] | None = None
    if prev is _S.SUBMITTING and to in (_S.PENDING, _S.FAILED):
        close = {"p_cost": None, "p_charge": 0.0, "p_outcome": f"not created ({to})"}
    elif prev in (_S.QUEUED, _S.RUNNING) and to in _SETTLED:
        cost = fields.get("cost")
        estimate = 0.0 if found is None else float(found.estimate_usd)
        amount, valid = charge(cost, estimate)
        close = {"p_cost": cost if valid else None, "p_charge": amount, "p_outcome": str(to)}
        spent = amount
        if found is None:  # an attempt from before the ledger: booked now, closed
            found = _open(conn, row, now, 0.0)
    elif prev in _MAYBE_BILLED and to is _S.PENDING and found is not None:
        spent = float(found.estimate_usd)
        close = {"p_cost": None, "p_charge": spent, "p_outcome": f"{prev}: charged its estimate"}
    if found is None or close is None:
        return Money(flight=flight)
    conn.execute(
        sql.ATTEMPT_CLOSE, {"p_id": found.id, "p_rid": row["request_id"], "p_now": now, **close}
    )
    return Money(spent, -float(found.estimate_usd), flight, valid)


@dataclass
class Money:
    """What one transition (or a batch of them, added up) moves the ledger's totals by; ``valid``
    whether a settled cost was valid (None: nothing settled)."""

    spent: float = 0.0
    reserved: float = 0.0
    flight: int = 0
    valid: bool | None = None

    def add(self, other: Money) -> None:
        self.spent += other.spent
        self.reserved += other.reserved
        self.flight += other.flight

    def move(self, conn: Connection) -> None:
        """Move the ledger by this much (nothing when it is nothing)."""
        if self.spent or self.reserved or self.flight:
            moved = {"p_spent": self.spent, "p_reserved": self.reserved, "p_flight": self.flight}
            conn.execute(sql.LEDGER_MOVE, moved)


def _closes_attempt(prev: JobState, to: JobState) -> bool:
    """Whether ``book`` may close the job's open attempt on this move (else it reads none)."""
    return (
        (prev is _S.SUBMITTING and to in (_S.PENDING, _S.FAILED))
        or (prev in (_S.QUEUED, _S.RUNNING) and to in _SETTLED)
        or (prev in _MAYBE_BILLED and to is _S.PENDING)
    )


def _open(conn: Connection, row: Mapping[Any, Any], now: datetime, estimate: float) -> Any:
    """Insert an open attempt for ``row``'s current attempt; returns its (id, estimate_usd)."""
    conn.execute(sql.ATTEMPT_INSERT, [attempt_row(row, now, estimate)])
    return conn.execute(sql.ATTEMPT_OPEN, {"p_key": row["key"]}).first()


def attempt_row(row: Mapping[Any, Any], now: datetime, estimate: float) -> dict[str, Any]:
    """A new open attempt for a job just claimed (``row`` as the claim's UPDATE returned it)."""
    return {
        "job_key": row["key"],
        "attempt": row["attempts"],
        "run_id": row["run_id"],
        "request_id": None,
        "estimate_usd": estimate,
        "opened_at": now,
    }
