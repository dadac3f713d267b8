"""The simulated GPU farm: a FIFO queue, N workers, a duration model, billing and a journal.

No task runs per job (or at all): the farm is a discrete-event simulation advanced lazily to "now"
whenever a request looks at it, so its cost grows with the requests served, not the queue length.

Duration model (simulated GPU seconds, deterministic):
    seconds = 20 + width * height * frames * steps / 3.5e6
e.g. 480x480, 81 frames, 12 steps -> 84 s; 1280x720, 141 frames, 40 steps -> 1.5 h. A job occupies
a worker for ``seconds / speed`` wall seconds. With ``jitter`` (``EmulatorConfig.duration_jitter``,
default 0) each job's seconds are spread by up to that fraction either way, seeded by the seed and
the job's inputs: the same inputs always take the same time.

Price: ``PRICE_USD_PER_SECOND`` per second of output video (frames / fps), the catalog's
``base_price_usd`` with ``price_unit: "second"``; billed when the job ends. These are vace-fun's;
the other emulated models' durations and prices are in emulator/outputs.py.
"""

from __future__ import annotations

import bisect
import json
import random
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from orchestrator.emulator.ledger import Account

__all__ = [
    "PRICE_UNIT",
    "PRICE_USD_PER_SECOND",
    "Farm",
    "Job",
    "OutOfBalance",
    "gpu_seconds",
    "job_cost",
    "resolution",
]

PRICE_USD_PER_SECOND = 0.05
PRICE_UNIT = "second"
_OVERHEAD_S = 20.0
_PIXEL_STEPS_PER_S = 3.5e6
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "forgotten"})


class OutOfBalance(Exception):
    """The account cannot pay for this job."""


def resolution(inputs: Mapping[str, Any]) -> tuple[int, int]:
    """Width and height from the model's ``"1280x720 (16:9)"`` resolution value."""
    match = re.match(r"\s*(\d+)\s*x\s*(\d+)", str(inputs.get("4_valuex3_value", "")))
    return (int(match[1]), int(match[2])) if match else (1024, 576)


def gpu_seconds(inputs: Mapping[str, Any]) -> float:
    """Simulated GPU seconds for a job (the module docstring's formula)."""
    width, height = resolution(inputs)
    frames = int(inputs.get("25_value", 81))
    steps = int(inputs.get("47_value", 12))
    return _OVERHEAD_S + width * height * frames * steps / _PIXEL_STEPS_PER_S


def job_cost(inputs: Mapping[str, Any]) -> float:
    """What a job is billed: the price per second of output video times its length."""
    return PRICE_USD_PER_SECOND * int(inputs.get("25_value", 81)) / int(inputs.get("38_value", 16))


@dataclass(eq=False)
class Job:
    """One submitted job, as the farm and the ledger see it."""

    request_id: str
    account: Account
    model_id: str
    inputs: dict[str, Any]
    input_sha256: str
    seq: int
    created_at: float
    duration: float  # wall seconds on a worker
    cost_usd: float
    faults: frozenset[str]
    output_token: str
    state: str = "in_queue"
    started_at: float | None = None
    finished_at: float | None = None
    billed_usd: float = 0.0
    downloads: int = 0
    forgotten: bool = False
    error: Any = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


_ERRORS: dict[str, Any] = {
    "fail_string": "Sampler failed: CUDA out of memory (emulated fault)",
    "fail_object": {"type": "ExecutionError", "message": "KSampler: NaN in latents (emulated)"},
    "fail_list": [
        {"type": "ExecutionError", "message": "VAE decode failed (emulated)"},
        {"type": "NodeError", "message": "node 98 raised (emulated)"},
    ],
}


@dataclass
class _Worker:
    free_at: float = 0.0
    job: Job | None = None


@dataclass
class Farm:
    """The queue, the workers and every job; optionally journaled to ``state_path``."""

    workers: int
    speed: float
    clock: Callable[[], float]
    accounts: dict[str, Account]
    default_balance: float
    state_path: Path | None = None
    jitter: float = 0.0  # each job's duration x (1 +- up to this), seeded by its inputs
    seed: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    history: list[Job] = field(default_factory=list)  # every job ever made, for the ledger
    by_token: dict[str, Job] = field(default_factory=dict)
    _queue: list[Job] = field(default_factory=list)
    _head: int = 0
    _seq: int = 0
    _pool: list[_Worker] = field(default_factory=list)
    _journal: TextIO | None = None

    def __post_init__(self) -> None:
        self._pool = [_Worker() for _ in range(max(1, self.workers))]
        if self.state_path is not None:
            self._replay(self.state_path)
            self.advance()
            self._journal = self.state_path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def advance(self, now: float | None = None) -> None:
        """Run the simulation up to ``now``: start queued jobs on free workers, finish due ones."""
        now = self.clock() if now is None else now
        while self._head < len(self._queue):
            worker = min(self._pool, key=lambda w: w.free_at)
            job = self._queue[self._head]
            start = max(worker.free_at, job.created_at)
            if start > now:
                break
            if worker.job is not None:
                self._finish(worker.job)
            self._head += 1
            job.state, job.started_at = "in_progress", start
            worker.job, worker.free_at = job, start + job.duration
        for worker in self._pool:
            if worker.job is not None and worker.free_at <= now:
                self._finish(worker.job)
                worker.job = None
        if self._head > 1024 and self._head * 2 > len(self._queue):
            del self._queue[: self._head]
            self._head = 0

    def submit(
        self,
        account: Account,
        model_id: str,
        inputs: dict[str, Any],
        input_sha256: str,
        faults: frozenset[str],
        *,
        seconds: float | None = None,
        cost: float | None = None,
    ) -> Job:
        """Queue a new job; raises OutOfBalance when the account cannot pay for it.

        ``seconds`` (simulated GPU seconds) and ``cost`` default to vace-fun's formulas above;
        another model's come from emulator/outputs.py."""
        now = self.clock()
        self.advance(now)
        seconds = gpu_seconds(inputs) if seconds is None else seconds
        if self.jitter:  # the same inputs always take the same time
            seconds *= 1.0 + random.Random(f"{self.seed}:{input_sha256}").uniform(
                -self.jitter, self.jitter
            )
        cost = job_cost(inputs) if cost is None else cost
        if account.available() < cost:
            raise OutOfBalance(account.name)
        record = {
            "e": "submit",
            "at": now,
            "request_id": str(uuid.uuid4()),
            "account": account.name,
            "model_id": model_id,
            "inputs": inputs,
            "input_sha256": input_sha256,
            "duration": seconds / self.speed,
            "cost": cost,
            "faults": sorted(faults),
            "token": secrets.token_urlsafe(24),
        }
        self._write(record)
        return self._add(record)

    def cancel(self, job: Job) -> bool:
        """Cancel a queued job (True); a running or finished one is not cancellable (False)."""
        now = self.clock()
        self.advance(now)
        if job.state != "in_queue":
            return False
        self._write({"e": "cancel", "at": now, "request_id": job.request_id})
        self._cancel(job, now)
        return True

    def forget(self) -> None:
        """A restart that loses every job: known ids answer 404001 from now on."""
        now = self.clock()
        self.advance(now)
        self._write({"e": "forget", "at": now})
        self._forget(now)

    def downloaded(self, job: Job) -> None:
        job.downloads += 1
        self._write({"e": "download", "request_id": job.request_id})

    def queue_position(self, job: Job) -> int:
        """How many jobs are ahead of a queued job."""
        index = bisect.bisect_left(self._queue, job.seq, lo=self._head, key=lambda j: j.seq)
        return index - self._head

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            self.accounts[name] = Account(name, self.default_balance)
        return self.accounts[name]

    def _add(self, record: Mapping[str, Any]) -> Job:
        self._seq += 1
        account = self.account(record["account"])
        job = Job(
            request_id=record["request_id"],
            account=account,
            model_id=record["model_id"],
            inputs=record["inputs"],
            input_sha256=record["input_sha256"],
            seq=self._seq,
            created_at=record["at"],
            duration=record["duration"],
            cost_usd=record["cost"],
            faults=frozenset(record["faults"]),
            output_token=record["token"],
        )
        account.reserve(job.cost_usd)
        self.jobs[job.request_id] = job
        self.by_token[job.output_token] = job
        self.history.append(job)
        self._queue.append(job)
        return job

    def _finish(self, job: Job) -> None:
        assert job.started_at is not None
        job.finished_at = job.started_at + job.duration
        failure = next((f for f in sorted(job.faults) if f in _ERRORS), None)
        job.state = "failed" if failure else "succeeded"
        job.error = _ERRORS[failure] if failure else None
        job.billed_usd = job.cost_usd
        job.account.release(job.cost_usd, billed=True)

    def _cancel(self, job: Job, now: float) -> None:
        self._queue.remove(job)
        job.state, job.finished_at = "cancelled", now
        job.account.release(job.cost_usd, billed=False)

    def _forget(self, now: float) -> None:
        for job in self.jobs.values():
            job.forgotten = True
            if not job.terminal:
                job.state, job.finished_at = "forgotten", now
                job.account.release(job.cost_usd, billed=False)
        self.jobs.clear()
        self.by_token.clear()
        self._queue.clear()
        self._head = 0
        for worker in self._pool:
            worker.job, worker.free_at = None, min(worker.free_at, now)

    def _write(self, record: Mapping[str, Any]) -> None:
        if self._journal is not None:
            self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._journal.flush()

    def _replay(self, path: Path) -> None:
        for record in _records(path):
            if "at" in record:
                self.advance(record["at"])
            kind = record.get("e")
            job = self.jobs.get(record.get("request_id", ""))
            if kind == "submit":
                self._add(record)
            elif kind == "cancel" and job is not None and job.state == "in_queue":
                self._cancel(job, record["at"])
            elif kind == "download" and job is not None:
                job.downloads += 1
            elif kind == "forget":
                self._forget(record["at"])


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's records; a last line cut short by a kill is skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record
