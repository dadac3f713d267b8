"""Progress for a run: a rich live display on a terminal, plain timestamped lines elsewhere."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Protocol

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.store.states import FINAL, JobState

__all__ = ["PlainProgress", "Progress", "RichProgress", "Snapshot", "make_progress"]


@dataclass
class Snapshot:
    """What a progress display shows: counts per state, spend, and the pace since the start."""

    counts: dict[str, int]
    spent_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)
    worked_at_start: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in FINAL)

    @property
    def worked(self) -> int:
        """Jobs finished by work, not by a cancel: what the pace is measured on."""
        return self.finished - self.counts.get(JobState.CANCELLED, 0)

    def per_minute(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (self.worked - self.worked_at_start) * 60.0 / elapsed

    def eta_seconds(self) -> float | None:
        rate = self.per_minute()
        remaining = self.total - self.finished
        return remaining * 60.0 / rate if rate > 0 else None

    def states(self) -> str:
        return " ".join(f"{s}={self.counts[s]}" for s in JobState if self.counts.get(s))

    def pace(self) -> str:
        eta = _duration(self.eta_seconds())
        return f"{self.per_minute():.1f} jobs/min | ETA {eta} | spent ${self.spent_usd:.2f}"

    def line(self) -> str:
        return f"{self.finished}/{self.total} finished | {self.states()} | {self.pace()}"


class Progress(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class RichProgress:
    """A live bar, counts per state, jobs per minute, ETA and spend, redrawn in place."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(
            Text("starting..."), console=console, refresh_per_second=4, transient=False
        )
        self.live.start()

    def update(self, snapshot: Snapshot) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            ProgressBar(total=max(snapshot.total, 1), completed=snapshot.finished, width=40),
            Text(f"{snapshot.finished}/{snapshot.total} finished"),
        )
        grid.add_row(Text(snapshot.states(), style="cyan"), "")
        grid.add_row(Text(snapshot.pace()), "")
        self.live.update(grid)

    def message(self, text: str) -> None:
        self.live.console.print(text)

    def close(self) -> None:
        self.live.stop()


class PlainProgress:
    """Timestamped lines, at most one every ``every`` seconds, for logs and CI."""

    def __init__(self, stream: IO[str], every: float = 5.0) -> None:
        self.stream = stream
        self.every = every
        self._last = 0.0
        self._last_line = ""

    def update(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        line = snapshot.line()
        if now - self._last >= self.every and line != self._last_line:
            self._write(line)
            self._last, self._last_line = now, line

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        self.stream.flush()

    def _write(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.stream.write(f"{stamp} {text}\n")
        self.stream.flush()


def make_progress(stream: IO[str], *, plain_every: float = 5.0) -> Progress:
    """A rich display when ``stream`` is a terminal, plain lines otherwise."""
    console = Console(file=stream)
    if console.is_terminal:
        return RichProgress(console)
    return PlainProgress(stream, every=plain_every)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
