"""``--until``: when a run stops submitting so that the jobs in flight finish and download in time.

A new job goes out only if now + what a job needs <= the deadline. What a job needs is this run's
90th percentile of submit-to-result time plus its 90th percentile of download time. Before any
job of this run has ended it is the last run's median (remembered per model, as ``plan`` uses
it) times ``_FALLBACK_MARGIN``; with neither, the first wave (``concurrency`` jobs) goes out and
the next submit waits for one of them to end, which gives the first figure.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from orchestrator.errors import SpecError

__all__ = ["Deadline", "parse_until"]

_PERCENTILE = 0.9
# A remembered median says less than this run's own figures: it is stretched by this much.
_FALLBACK_MARGIN = 1.5
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_FORMS = (
    "give HH:MM (local time), a duration such as 90m, 8h or 1h30m, "
    "or a date and time such as 2026-12-01T06:30"
)


@dataclass(frozen=True)
class Deadline:
    """A time (``at``, seconds since the epoch) by which every job must be on disk."""

    at: float
    label: str  # how the startup and stop lines name it: "06:30 tomorrow"
    clock: Callable[[], float] = time.time
    fallback: float | None = None  # seconds a job took last time (a median), if remembered

    def need(self, durations: Sequence[float], downloads: Sequence[float]) -> float | None:
        """Seconds a new job needs to end and be on disk; None while nothing says."""
        if durations:
            return _percentile(durations) + (_percentile(downloads) if downloads else 0.0)
        if self.fallback is not None:
            return self.fallback * _FALLBACK_MARGIN
        return None

    def too_late(self, need: float) -> bool:
        """Whether a job submitted now and needing ``need`` seconds would end after the deadline."""
        return self.clock() + need > self.at

    def startup(self) -> str:
        return (
            f"running until {self.label}: submitting stops in time for the jobs in flight "
            "to finish and download"
        )

    def stop_line(self, need: float) -> str:
        return (
            f"stopped submitting: the deadline {self.label} is near (a new job needs about "
            f"{_span(need)} to finish and download); the jobs in flight finish, run again to "
            "continue"
        )

    def passed_line(self) -> str:
        return (
            f"stopped submitting: the deadline {self.label} has passed; the jobs in flight "
            "finish, run again to continue"
        )


def parse_until(
    text: str,
    *,
    now: datetime | None = None,
    clock: Callable[[], float] = time.time,
    fallback: float | None = None,
) -> Deadline:
    """``--until``'s value: ``HH:MM`` (today, or tomorrow once past), a duration (``90m``,
    ``8h``, ``1h30m``) or an ISO date and time (which must be in the future); a SpecError else."""
    now = now if now is not None else datetime.fromtimestamp(clock()).astimezone()
    given = text.strip()
    clock_time = _CLOCK.match(given)
    if clock_time:
        hour, minute = int(clock_time.group(1)), int(clock_time.group(2))
        if hour > 23 or minute > 59:
            raise SpecError(f"--until {text}: not a time of day (00:00 to 23:59)")
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        day = "today"
        if at <= now:
            at, day = at + timedelta(days=1), "tomorrow"
        if _is_local(now):  # 06:30 on the wall clock, in the offset that day has (DST changes)
            at = at.replace(tzinfo=None).astimezone()
        return Deadline(at.timestamp(), f"{at:%H:%M} {day}", clock, fallback)
    span = _DURATION.match(given)
    if span and given:
        hours, minutes, seconds = (int(g or 0) for g in span.groups())
        total = hours * 3600 + minutes * 60 + seconds
        if total <= 0:
            raise SpecError(f"--until {text}: a duration must be longer than 0")
        try:
            at = now + timedelta(seconds=total)
        except (OverflowError, ValueError):  # past year 9999, or more days than Python counts
            raise SpecError(f"--until {text}: too far ahead") from None
        if _is_local(now):  # the wall clock then, after a DST change on the way
            at = at.astimezone()
        shown = f"{at:%H:%M}" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M}"
        return Deadline(at.timestamp(), f"{shown} (in {given})", clock, fallback)
    try:
        when = datetime.fromisoformat(given)
    except ValueError:
        raise SpecError(f"--until {text!r}: {_FORMS}") from None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is local time
    if when <= now:
        raise SpecError(f"--until {text}: is in the past (it is now {now:%Y-%m-%d %H:%M})")
    return Deadline(when.timestamp(), f"{when:%Y-%m-%d %H:%M}", clock, fallback)


def _is_local(now: datetime) -> bool:
    """Whether ``now`` is this machine's local time (its offset is the local one then)."""
    return now.utcoffset() == now.astimezone().utcoffset()


def _percentile(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(_PERCENTILE * len(ordered)) - 1)]


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
