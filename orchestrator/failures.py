"""When failing jobs stop a run: ``max_failures`` (a count or a share), and the errors they had.

A count (``10``) stops the run at that many failed attempts. A share (``0.2``, ``20%``) stops it
once that share of the jobs that ended this run failed, counted only after ``MIN_FINISHED`` jobs
ended, so two early failures out of three do not stop a night's sweep. Every failed attempt
counts: a job the run submits again (``retries``) and that fails again counts twice.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MIN_FINISHED", "FailureLimit", "Failures"]

# Jobs that must have ended before a share can stop the run.
MIN_FINISHED = 10
_SHARE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")


@dataclass(frozen=True)
class FailureLimit:
    """``max_failures`` read: ``count`` failed attempts, or a ``share`` of the finished jobs."""

    count: int | None = None
    share: float | None = None
    text: str = ""

    @classmethod
    def parse(cls, value: Any) -> FailureLimit:
        """``10``, ``"10"``, ``0.2``, ``"0.2"`` or ``"20%"``; a ValueError says what is allowed."""
        allowed = "give a count such as 10, or a share such as 0.2 or 20%"
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(allowed)
        text = str(value).strip()
        if isinstance(value, str):
            match = _SHARE.match(value)
            if match:
                share = float(match.group(1)) / 100
                if not 0 < share < 1:
                    raise ValueError("a share must be above 0% and below 100%")
                return cls(share=share, text=text)
            try:
                value = int(text) if text.lstrip("-").isdigit() else float(text)
            except ValueError:
                raise ValueError(allowed) from None
        if isinstance(value, int):
            if value < 1:
                raise ValueError("a count must be at least 1")
            return cls(count=value, text=text)
        if not math.isfinite(value) or not 0 < value < 1:
            raise ValueError("a share must be above 0 and below 1 (or a whole count)")
        return cls(share=value, text=text)


@dataclass
class Failures:
    """This run's ended jobs and failed attempts, with their error messages counted."""

    limit: FailureLimit | None = None
    finished: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def ended(self, error: str | None) -> str | None:
        """Count a job that ended (``error`` when it failed); the stop line once past the limit."""
        self.finished += 1
        if error is not None:
            self.failed += 1
            self.errors[error] += 1
        return self.verdict() if self.failed else None

    def verdict(self) -> str | None:
        limit = self.limit
        if limit is None:
            return None
        if limit.count is not None:
            over = self.failed >= limit.count
        else:
            assert limit.share is not None
            over = self.finished >= MIN_FINISHED and self.failed >= limit.share * self.finished
        if not over:
            return None
        message, times = self.errors.most_common(1)[0]
        return (
            f"stopped submitting: {self.failed} of {self.finished} finished jobs failed "
            f"(max_failures {limit.text}); the commonest error ({times}x): {message}"
        )
