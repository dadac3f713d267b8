"""The job state machine: the states and the one table of legal transitions (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = ["FINAL", "RETRYABLE", "TRANSITIONS", "JobState", "allowed_from"]


class JobState(StrEnum):
    """Where a job stands; only the store changes it, and only along ``TRANSITIONS``."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    LOST = "lost"


_S = JobState
# The final states `retry` may put back to pending (done is final too, but `--force` renews it).
RETRYABLE = frozenset({_S.FAILED, _S.EXPIRED, _S.LOST, _S.CANCELLED, _S.UNKNOWN})

# The DESIGN.md table, plus pending -> cancelled (`comfysweep cancel`: a job never sent; the
# conditional UPDATE keeps it apart from a runner's claim), and three moves the runner needs that
# never submit by themselves:
# running -> cancelled (the API reports a running job cancelled), done -> succeeded (an output
# vanished from disk: download it again), done -> pending (`--force`: render again, on purpose).
# `retry` is the only way out of the other final states, on purpose: a job in `unknown` may exist
# remotely and be billed, so nothing resubmits it by itself.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        _S.PENDING: frozenset({_S.SUBMITTING, _S.CANCELLED}),
        _S.SUBMITTING: frozenset({_S.QUEUED, _S.PENDING, _S.FAILED, _S.UNKNOWN}),
        _S.QUEUED: frozenset({_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.LOST}),
        _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.LOST}),
        _S.SUCCEEDED: frozenset({_S.DONE, _S.EXPIRED, _S.LOST}),
        _S.DONE: frozenset({_S.SUCCEEDED, _S.PENDING}),
        **{state: frozenset({_S.PENDING}) for state in RETRYABLE},
    }
)

# States the runner leaves alone: nothing more will happen to the job without a `retry`.
FINAL: frozenset[JobState] = frozenset(s for s in JobState if s is _S.DONE or s in RETRYABLE)


def allowed_from(to: JobState, expect: Iterable[JobState] | None = None) -> frozenset[JobState]:
    """The states a job may be in to move to ``to``: TRANSITIONS, narrowed by ``expect``."""
    sources = frozenset(s for s, targets in TRANSITIONS.items() if to in targets)
    if expect is not None:
        sources &= frozenset(JobState(s) for s in expect)
    return sources
