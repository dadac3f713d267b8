"""The morning account: how a run ended, as ``summary.md`` in the results folder and as JSON.

``account()`` is pure: it takes the run's report and what was read from the store and returns
one JSON-ready dict; ``markdown()`` renders it; ``write()`` puts both in the results folder
atomically (a temporary file renamed over the old one, never written through a symlink).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shlex
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator import budget
from orchestrator.estimate import duration
from orchestrator.notify import Notifier
from orchestrator.responses import error_message
from orchestrator.results import atomic_file
from orchestrator.store import RETRYABLE, JobRow, JobState, Store

__all__ = [
    "SUMMARY_FILE",
    "SUMMARY_JSON",
    "Invocation",
    "RunAccount",
    "RunTimes",
    "account",
    "markdown",
    "write",
]

log = logging.getLogger("comfysweep")

SUMMARY_FILE = "summary.md"
SUMMARY_JSON = "summary.json"
TOP_ERRORS = 5


@dataclass(frozen=True)
class Invocation:
    """How the user ran the sweep, so the summary can say the exact command to go on."""

    spec: str  # the spec's path as the user can type it
    emulator: bool = False
    store: str | None = None  # --store as given (a URL's password masked)
    flags: tuple[str, ...] = ()  # the run's setting flags as given (--max-cost 2.0, ...)

    def command(self, verb: str, *extra: str) -> str:
        """The command line, quoted to paste; ``run`` repeats the flags the run was given (one
        that ``extra`` gives again, such as a raised --max-cost, only once, as ``extra`` says)."""
        spec = f"./{self.spec}" if self.spec.startswith("-") else self.spec  # never read as a flag
        words = ["comfysweep", verb, spec]
        if verb == "run" and self.emulator:
            words.append("--emulator")
        if self.store is not None:
            words += ["--store", self.store]
        if verb == "run":
            given = set(extra)
            pairs = zip(self.flags[::2], self.flags[1::2], strict=True)
            words += [word for flag, value in pairs if flag not in given for word in (flag, value)]
        return shlex.join([*words, *extra])


@dataclass
class RunTimes:
    """What the store says about this run's jobs: seconds queued and running, finishes, errors."""

    queued: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    finished: int = 0  # jobs this run brought to ``done``
    errors: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, rows: Iterable[JobRow], run_id: int | None) -> RunTimes:
        """Read ``rows`` (streamed) for the jobs run ``run_id`` touched last."""
        times = cls()
        for row in rows:
            if run_id is not None and row.run_id != run_id:
                continue
            if row.submitted_at and row.started_at:
                times.queued.append((row.started_at - row.submitted_at).total_seconds())
            if row.started_at and row.finished_at:
                times.running.append((row.finished_at - row.started_at).total_seconds())
            if row.state is JobState.DONE:
                times.finished += 1
            if row.error is not None and row.state is not JobState.DONE:
                times.errors[_error_text(row.error)] += 1
        return times


def account(
    *,
    sweep: str,
    results_dir: Path | str,
    counts: Mapping[str, int],
    elapsed: float,
    spent_usd: float,
    cap_usd: float | None,
    times: RunTimes,
    invocation: Invocation,
    stop_reason: str | None = None,
    stop_kind: str | None = None,
    fatal: bool = False,
    balance_before: float | None = None,
    balance_after: float | None = None,
    requests: int | None = None,
    estimate_left_usd: float | None = None,
    reserved_usd: float = 0.0,
) -> dict[str, Any]:
    """The run's account as one JSON-ready dict (the notifier's payload too).

    ``estimate_left_usd`` is what the cap must hold beyond ``spent_usd`` for every job left to
    go: the pending jobs' estimate and ``reserved_usd`` (jobs that may still be billed)."""
    complete = not fatal and all(n == 0 for s, n in counts.items() if s != JobState.DONE.value)
    hours = elapsed / 3600
    return {
        "sweep": sweep,
        "results": str(results_dir),
        "outcome": _outcome(complete, stop_kind, stop_reason, fatal),
        "stop_reason": stop_reason,
        "stop_kind": stop_kind,
        "complete": complete,
        "counts": {s: n for s, n in counts.items() if n},
        "wall_seconds": round(elapsed, 3),
        "finished": times.finished,
        "jobs_per_hour": round(times.finished / hours, 1) if hours > 0 else None,
        "queue_seconds": _spread(times.queued),
        "run_seconds": _spread(times.running),
        "spent_usd": round(spent_usd, 4),
        "cap_usd": cap_usd,
        "reserved_usd": round(reserved_usd, 4),
        "balance_before_usd": balance_before,
        "balance_after_usd": balance_after,
        "requests": requests,
        "requests_per_job": (
            round(requests / times.finished, 2) if requests is not None and times.finished else None
        ),
        "top_errors": [
            {"error": text, "count": n} for text, n in times.errors.most_common(TOP_ERRORS)
        ],
        "next": _next_steps(
            counts,
            # The budget's stop for want of a price (budget.no_price_message): a price goes on.
            "price" if (stop_reason or "").startswith("no price known") else stop_kind,
            cap_usd,
            spent_usd,
            estimate_left_usd,
            invocation,
        ),
    }


def markdown(data: Mapping[str, Any]) -> str:
    """The account as summary.md (and as the lines a run prints when it ends)."""
    lines = [f"# {data['sweep']}: {data['outcome']}", ""]
    if data["stop_reason"]:
        lines += [f"stopped: {data['stop_reason']}", ""]
    states = ", ".join(f"{n} {s}" for s, n in data["counts"].items()) or "no jobs"
    lines.append(f"- jobs: {states}")
    rate = data["jobs_per_hour"]
    lines.append(
        f"- wall time: {duration(data['wall_seconds'])}; {data['finished']} job(s) finished"
        + ("" if rate is None else f", {rate:g} an hour")
    )
    lines.append(f"- queue time: {_spread_text(data['queue_seconds'])}")
    lines.append(f"- run time: {_spread_text(data['run_seconds'])}")
    cap = data["cap_usd"]
    spent = f"- spent: ${data['spent_usd']:.2f}" + ("" if cap is None else f" of a ${cap:.2f} cap")
    if data.get("reserved_usd"):
        spent += f", ${data['reserved_usd']:.2f} reserved (jobs that may still be billed)"
    lines.append(spent)
    before, after = data["balance_before_usd"], data["balance_after_usd"]
    if before is not None or after is not None:
        lines.append(f"- balance: {_usd(before)} before, {_usd(after)} after")
    if data["requests"] is not None:
        per = data["requests_per_job"]
        each = "" if per is None else f", {per:g} per finished job"
        lines.append(f"- requests: {data['requests']}{each}")
    if data["top_errors"]:
        lines += ["", "## Top errors", ""]
        lines += [f"- {e['count']} x {e['error']}" for e in data["top_errors"]]
    if data["next"]:
        lines += ["", "## Next", ""]
        lines += [f"- {step}" for step in data["next"]]
    return "\n".join(lines) + "\n"


def write(folder: Path, data: Mapping[str, Any]) -> Path:
    """Write summary.md and summary.json in ``folder``, each atomically; the .md's path."""
    path = folder / SUMMARY_FILE
    with atomic_file(path) as handle:
        handle.write(markdown(data))
    with atomic_file(folder / SUMMARY_JSON) as handle:
        handle.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    return path


def _outcome(complete: bool, kind: str | None, reason: str | None, fatal: bool) -> str:
    if complete:
        return "complete"
    if kind:
        return f"stopped ({kind})"
    if fatal:
        return "stopped by an error"
    return "stopped" if reason else "incomplete"


def _next_steps(
    counts: Mapping[str, int],
    stop_kind: str | None,
    cap: float | None,
    spent: float,
    left_usd: float | None,
    how: Invocation,
) -> list[str]:
    steps = []
    left = sum(counts.get(s.value, 0) for s in (JobState.PENDING, JobState.SUBMITTING))
    in_flight = sum(
        counts.get(s.value, 0) for s in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
    )
    if stop_kind == "price" and left:
        give = _code(how.command("run", "--price", "0.05/second"))
        steps.append(f"give a price to go on ({left} job(s) left, none priced): {give}")
    elif stop_kind == "budget" and left and cap is not None:
        raised = max(cap, spent + left_usd) if left_usd is not None else None
        flag = "--max-cost USD" if raised is None else f"--max-cost {budget.cents_up(raised):.2f}"
        raise_cap = _code(how.command("run", *flag.split()))
        steps.append(f"raise the cap to go on ({left} job(s) left): {raise_cap}")
    elif left or in_flight:
        steps.append(f"resume ({left + in_flight} job(s) left): {_code(how.command('run'))}")
    for state in sorted(RETRYABLE, key=lambda s: s.value):
        n = counts.get(state.value, 0)
        if n:
            flag = f"--{state.value}"
            steps.append(f"retry {n} {state.value}: {_code(how.command('retry', flag))}")
    return steps


def _code(command: str) -> str:
    """``command`` as a Markdown code span that a backtick inside (a path's) does not end."""
    longest = max((len(run) for run in re.findall(r"`+", command)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{command}{pad}{fence}"


def _spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"median": round(statistics.median(ordered), 3), "p95": round(p95, 3), "n": len(values)}


def _spread_text(spread: Mapping[str, Any] | None) -> str:
    if spread is None:
        return "not measured"
    return (
        f"median {_seconds(spread['median'])}, p95 {_seconds(spread['p95'])} ({spread['n']} jobs)"
    )


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else duration(value)


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def _error_text(error: Any) -> str:
    """An error as the run's own lines name it (``type: message``, as max_failures says it)."""
    text = " ".join((error_message(error) or "an error without a message").split())
    return text if len(text) <= 120 else text[:119] + "…"


# -- the run's side: reads the store and the API at the end, writes, prints and notifies --------


@dataclass
class RunAccount:
    """Collects what a run's account needs as it goes, and gives the account when it ends."""

    store: Store
    invocation: Invocation
    sweep: str
    results_dir: Path
    cap_usd: float | None
    notifier: Notifier | None = None
    stream: IO[str] | None = None
    balance_before: float | None = None
    started: float = field(default_factory=time.monotonic)

    def say(self, line: str) -> None:
        """A line for the user: on the stream (the CLI's stdout) and in run.log."""
        log.info("%s", line)
        if self.stream is not None:
            self.stream.write(line + "\n")
            self.stream.flush()

    def data(
        self,
        *,
        stop_reason: str | None = None,
        stop_kind: str | None = None,
        fatal: bool = False,
        elapsed: float | None = None,
        requests: int | None = None,
        balance_after: float | None = None,
        left_usd: float | None = None,
    ) -> dict[str, Any]:
        """The account now, from the store (streamed once)."""
        books = self.store.ledger()
        return account(
            sweep=self.sweep,
            results_dir=self.results_dir,
            counts=self.store.counts(in_spec=True),
            elapsed=time.monotonic() - self.started if elapsed is None else elapsed,
            spent_usd=books.spent_usd,
            reserved_usd=books.reserved_usd,
            cap_usd=self.cap_usd,
            times=RunTimes.of(self.store.jobs(), self.store.run_id),
            invocation=self.invocation,
            stop_reason=stop_reason,
            stop_kind=stop_kind,
            fatal=fatal,
            balance_before=self.balance_before,
            balance_after=balance_after,
            requests=requests,
            estimate_left_usd=left_usd,
        )

    def event(self, event: str, text: str) -> None:
        """A stall or the budget, mid-run: the notifier hears it at once (from a thread)."""
        if self.notifier is None:
            return
        budget = event == "budget"  # a stop: no new submits, the jobs in flight still end
        data = self.data(stop_reason=text if budget else None, stop_kind=event if budget else None)
        data["outcome"] = "running"
        self.notifier.send_soon({"event": event, "text": text, **data})

    def end(self, data: dict[str, Any]) -> None:
        """Print the account, write summary.md beside the outputs, tell the notifier.

        A stdout that no longer takes it (a pipe whose reader went) loses only the print."""
        text = markdown(data)
        if self.stream is not None:
            try:
                self.stream.write("\n" + text)
                self.stream.flush()
            except OSError as exc:
                log.warning("cannot print the run's account: %s", exc.strerror or exc)
        try:
            path = write(self.results_dir, data)
        except OSError as exc:  # a full disk: the account is printed all the same, and says so
            line = (
                f"cannot write {SUMMARY_FILE} in {self.results_dir}: {exc.strerror or exc} "
                "(the account above is the only copy)"
            )
            log.warning("%s", line)
            if self.stream is not None:
                with contextlib.suppress(OSError):
                    self.stream.write(line + "\n")
                    self.stream.flush()
        else:
            log.info("the run's account is in %s", path)
        if self.notifier is not None:
            self.notifier.drain()
            self.notifier.send({"event": "end", **data})
