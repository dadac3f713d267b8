"""Accounts (one per token, each with a balance) and the ledger that proves nothing was paid twice.

The ledger is the emulator's own audit trail, not part of the real API: it outlives a restart that
forgets every job, so a test can still count how many jobs each input created and what was billed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.emulator.farm import Job

__all__ = ["Account", "iso_time", "ledger_snapshot"]


@dataclass(eq=False)
class Account:
    """One API token's account: its balance, what in-flight jobs will cost, and its peak load."""

    name: str
    balance_usd: float
    reserved_usd: float = 0.0  # the cost of its queued and running jobs, billed when they end
    billed_usd: float = 0.0
    in_flight: int = 0
    peak_in_flight: int = 0

    def available(self) -> float:
        return self.balance_usd - self.reserved_usd

    def reserve(self, cost: float) -> None:
        self.reserved_usd += cost
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def release(self, cost: float, *, billed: bool) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - cost)
        self.in_flight -= 1
        if billed:
            self.balance_usd -= cost
            self.billed_usd += cost


def iso_time(epoch: float | None) -> str | None:
    """An epoch time in the reference's format, ``2026-11-24T10:00:00.123456+00:00``."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def ledger_snapshot(jobs: Iterable[Job], accounts: Iterable[Account]) -> dict[str, Any]:
    """The ``/_emulator/ledger`` document."""
    rows = []
    by_input: Counter[str] = Counter()
    for job in jobs:
        by_input[job.input_sha256] += 1
        rows.append(
            {
                "request_id": job.request_id,
                "account": job.account.name,
                "model_id": job.model_id,
                "input_sha256": job.input_sha256,
                "status": job.state,
                "cost": round(job.billed_usd, 6),
                "created_at": iso_time(job.created_at),
                "started_at": iso_time(job.started_at),
                "finished_at": iso_time(job.finished_at),
                "downloads": job.downloads,
                "faults": sorted(job.faults),
                "forgotten": job.forgotten,
            }
        )
    accounts = list(accounts)
    return {
        "jobs": rows,
        "submissions_by_input": dict(by_input),
        "billed_usd": round(sum(a.billed_usd for a in accounts), 6),
        "peak_in_flight": {a.name: a.peak_in_flight for a in accounts},
        "accounts": {
            a.name: {
                "balance_usd": round(a.balance_usd, 6),
                "billed_usd": round(a.billed_usd, 6),
                "in_flight": a.in_flight,
            }
            for a in accounts
        },
    }
