"""What the store hands out: immutable rows, decoded from the tables' JSON text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from orchestrator.canonical import canonical_json
from orchestrator.store.blobs import put_back
from orchestrator.store.states import JobState

__all__ = [
    "FIELDS",
    "Control",
    "Event",
    "JobLike",
    "JobRow",
    "RunInfo",
    "RunRecord",
    "SyncGuard",
    "SyncResult",
    "encode_fields",
]


class JobLike(Protocol):
    """What `Store.sync_jobs` reads from a grid job (orchestrator.grid.Job has these).

    A job may also have ``rank`` (the run order; orchestrator.grid.Job does): without one, or
    with None, its rank is its index.
    """

    @property
    def key(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def model_id(self) -> str: ...
    @property
    def inputs(self) -> Mapping[str, Any]: ...
    @property
    def repeat(self) -> int: ...
    @property
    def sources(self) -> Mapping[str, str | list[str]]: ...


class SyncGuard(Protocol):
    """Looks at a sync's new jobs before it commits (orchestrator.drift is the one in use).

    For each new job the store asks for its ``twin``, another key the same work may already be
    stored under, and reports each twin it finds; ``check`` is the last call inside the sync's
    transaction, and raising there rolls the whole sync back.
    """

    def twin(self, job: JobLike) -> str | None: ...
    def found(self, job: JobLike, state: JobState) -> None: ...
    def check(self) -> None: ...


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as stored; ``outputs`` is a list of {url, path, size, sha256} dicts.

    ``inputs`` is the complete POST body (blobs put back); ``sources`` maps a raw input key to the
    local file its data: URI was read from (what output names are made of).
    """

    key: str
    index: int
    model_id: str
    inputs: dict[str, Any]
    repeat: int
    state: JobState
    request_id: str | None
    attempts: int
    error: Any
    cost: float | None
    outputs: list[dict[str, Any]]
    result: dict[str, Any] | None
    created_at: datetime
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    downloaded_at: datetime | None
    updated_at: datetime
    in_spec: bool
    run_id: int | None = None
    sources: dict[str, str | list[str]] = field(default_factory=dict)
    rank: int = 0  # the run order claim follows (the grid index unless the spec orders otherwise)

    @classmethod
    def from_row(cls, m: Mapping[Any, Any], blobs: Mapping[str, str]) -> JobRow:
        """The row ``m`` of the jobs table; ``blobs`` holds (at least) the blobs it refers to."""
        inputs = json.loads(m["inputs"])
        if m["blob_refs"]:
            put_back(inputs, json.loads(m["blob_refs"]), blobs)
        return cls(
            key=m["key"],
            index=m["index"],
            model_id=m["model_id"],
            inputs=inputs,
            repeat=m["repeat"],
            state=JobState(m["state"]),
            request_id=m["request_id"],
            attempts=m["attempts"],
            error=None if m["error"] is None else json.loads(m["error"]),
            cost=m["cost"],
            outputs=json.loads(m["outputs"]),
            result=None if m["result"] is None else json.loads(m["result"]),
            created_at=m["created_at"],
            submitted_at=m["submitted_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            downloaded_at=m["downloaded_at"],
            updated_at=m["updated_at"],
            in_spec=bool(m["in_spec"]),
            run_id=m["run_id"],
            sources=json.loads(m["sources"]) if m["sources"] else {},
            rank=m["rank"],
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One transition of one job; ``request_id`` is the job's request id after it."""

    id: int
    key: str
    from_state: JobState | None
    to_state: JobState
    at: datetime
    detail: str | None
    request_id: str | None
    run_id: int | None

    @classmethod
    def from_row(cls, m: Mapping[Any, Any]) -> Event:
        return cls(
            id=m["id"],
            key=m["job_key"],
            from_state=None if m["from_state"] is None else JobState(m["from_state"]),
            to_state=JobState(m["to_state"]),
            at=m["at"],
            detail=m["detail"],
            request_id=m["request_id"],
            run_id=m["run_id"],
        )


@dataclass(frozen=True, slots=True)
class SyncResult:
    """``total`` jobs in the spec, of which ``new`` were not in the store before."""

    total: int
    new: int


# The non-state fields a caller may set, and how each is stored.
FIELDS = frozenset({"request_id", "error", "cost", "outputs", "result"})


def encode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for ``fields``; an unknown name is a bug in the caller (TypeError)."""
    unknown = set(fields) - FIELDS
    if unknown:
        raise TypeError(f"not a job field: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "outputs":
            out[name] = canonical_json(list(value or []))
        elif name in ("error", "result"):
            out[name] = None if value is None else canonical_json(value)
        elif name == "cost":
            out[name] = None if value is None else float(value)
        else:
            out[name] = None if value is None else str(value)
    return out


@dataclass(frozen=True, slots=True)
class Control:
    """A request from another shell to a live run (the ``controls`` table): stop or cancel."""

    id: int
    kind: str  # "stop" | "cancel"
    keys: tuple[str, ...] | None  # the jobs a cancel covers; None: every job in flight
    where_text: str | None
    requested_at: datetime
    requested_by: str
    seen_at: datetime | None
    run_id: int | None
    outcome: str | None

    @classmethod
    def from_row(cls, m: Mapping[Any, Any]) -> Control:
        keys = m["keys"]
        return cls(
            id=m["id"],
            kind=m["kind"],
            keys=None if keys is None else tuple(json.loads(keys)),
            where_text=m["where_text"],
            requested_at=m["requested_at"],
            requested_by=m["requested_by"],
            seen_at=m["seen_at"],
            run_id=m["run_id"],
            outcome=m["outcome"],
        )


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run the store recorded (the ``runs`` table)."""

    id: int
    owner: str
    pid: int
    host: str
    version: str
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class RunRecord(RunInfo):
    """A run with what it did: attempts it submitted (a request id came back), jobs it brought
    to a final state, and the charges of its attempts."""

    submitted: int = 0
    finished: int = 0
    spent_usd: float = 0.0
