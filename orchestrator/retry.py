"""The retry policy of the HTTP edge: one value object, shaped like stamina's, run by tenacity.

The client decides *what* is retryable (a predicate per call kind, see ``client.py``); this
module decides *how long* to wait: capped exponential backoff plus jitter, or the server's
``Retry-After`` when it sent one; and how long one exchange may take in all (a server trickling
one byte a second never trips a per-read timeout, so every request also has a total deadline).
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

log = logging.getLogger("comfysweep.client")
P = ParamSpec("P")
T = TypeVar("T")

# A Retry-After far in the future (or a hostile one) must not park a sweep for hours.
RETRY_AFTER_CAP = 300.0
# One API exchange (connect, send, the whole answer) ends within this many per-read timeouts.
DEADLINE_TIMEOUTS = 3.0
# A download may take longer, as long as it keeps this average rate after its first deadline.
MIN_DOWNLOAD_RATE = 64 * 1024  # bytes per second


class DeadlineExceeded(httpx.TimeoutException):
    """An exchange went past its total deadline (a trickling or stuck server)."""


def total_deadline(timeout: float) -> float:
    """Seconds one exchange may take in all, for a per-read ``timeout``."""
    return DEADLINE_TIMEOUTS * timeout


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a call; ``wait=False`` turns every wait off (tests)."""

    attempts: int = 6
    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.5
    wait: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.initial < 0 or self.maximum < 0 or self.jitter < 0:
            raise ValueError("RetryPolicy waits must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A server's ``Retry-After`` wins over the backoff (capped at RETRY_AFTER_CAP); otherwise
        ``initial * 2**(attempt-1)`` capped at ``maximum``, plus up to ``jitter`` seconds.
        """
        if not self.wait:
            return 0.0
        if retry_after is not None:
            return min(max(retry_after, 0.0), RETRY_AFTER_CAP)
        backoff = min(self.initial * 2.0 ** max(attempt - 1, 0), self.maximum)
        return backoff + random.uniform(0.0, self.jitter)

    def retrying(
        self,
        retryable: Callable[[BaseException], bool],
        what: str,
        scrub: Callable[[str], str] = str,
    ) -> Retrying:
        """A controller that retries ``retryable`` failures and re-raises the last one.

        Its log lines go through ``scrub``: a failure's text may repeat what a server sent.
        """
        return Retrying(self, retryable, what, scrub)

    def tenacity(
        self,
        retryable: Callable[[BaseException], bool],
        what: str,
        scrub: Callable[[str], str] = str,
        sleep: Callable[[float], Awaitable[None] | None] | None = None,
    ) -> AsyncRetrying:
        """The tenacity controller of this policy: backoff or Retry-After, one log line a retry;
        ``sleep`` instead of tenacity's own (tests record the waits)."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.delay(state.attempt_number, getattr(exc, "retry_after", None))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "%s failed (%s), attempt %d of %d; retrying in %.1fs",
                scrub(what),
                scrub(describe(exc)),
                state.attempt_number,
                self.attempts,
                state.upcoming_sleep,
            )

        controller = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        if sleep is not None:
            return controller.copy(sleep=sleep)
        return controller


class Retrying:
    """Runs a call under a policy: the first attempt bare, tenacity only after a failure it may
    retry. Nearly every call succeeds at once, and tenacity's controller (its state, its hooks,
    its loop) cost more than the call's own bookkeeping: built only when a retry may follow.

    Tenacity then replays that first failure as its own attempt 1, so the waits, the attempt
    numbers in the log lines and the last error re-raised are what they are without the bare try.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        retryable: Callable[[BaseException], bool],
        what: str,
        scrub: Callable[[str], str],
    ) -> None:
        self.policy = policy
        self.retryable = retryable
        self.what = what
        self.scrub = scrub
        self.sleep: Callable[[float], Awaitable[None] | None] | None = None  # tenacity's unless set

    async def __call__(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not self.retryable(exc):
                raise
            first: Exception | None = exc
        controller = self.policy.tenacity(self.retryable, self.what, self.scrub, self.sleep)

        async def attempt() -> T:
            nonlocal first
            if first is not None:  # attempt 1 is the bare one that failed
                failed, first = first, None
                raise failed
            return await fn(*args, **kwargs)

        return await controller(attempt)


def describe(exc: BaseException | None) -> str:
    """A short, token-free description of a failure for log lines and messages."""
    if exc is None:
        return "no error"
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # float() also accepts "nan" and "inf": neither is a usable wait.
        return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # a "-0000" zone parses naive; HTTP dates are UTC anyway
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)
