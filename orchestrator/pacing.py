"""Pacing: how often a run speaks to the API, so it stays polite without wasting requests.

Three pieces, each a small value with an injectable clock (tests drive them without sleeping):

- ``TokenBucket``: the request-rate limit shared by every call of one client (submit, polls,
  cancel, catalog, downloads): ``rate`` requests a second, bursts of half a second's worth.
- ``Pacer``: the bucket, plus the client-wide pause a 429 asks for (``Retry-After``): every
  request of every task waits until it ends, not only the one refused. Repeated 429s halve the
  number of submits in flight (additive increase, multiplicative decrease); successes grow it
  back. One log line when throttling starts, one when it ends.
- ``PollPlanner``: when to look at a job again, from this run's observed durations (the
  server's ``finished_at - created_at`` when the result says both) and its queue position, with
  jitter, a floor and a ceiling. Until a first job has finished, one job (the scout) polls on its
  own while the others wait for what it learns.

No SQL and no HTTP here: the client awaits ``Pacer.wait()`` before each request and reports
each answer's status; the runner asks the planner how long to sleep.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import anyio

from orchestrator.errors import ComfysweepError
from orchestrator.retry import RETRY_AFTER_CAP

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_RATE",
    "Pacer",
    "PollPlanner",
    "TokenBucket",
    "check_rate",
    "prepaid",
    "server_duration",
]

log = logging.getLogger("comfysweep.pacing")

DEFAULT_RATE = 10.0  # requests a second: RunComfy documents no limit; its CLI polls every 2 s
DEFAULT_BURST = 10  # the most a burst may hold, whatever the rate
# Set by ``prepaid()``: this task's next request has its token already (Pacer.take_ready).
_PREPAID: contextvars.ContextVar[bool] = contextvars.ContextVar("prepaid", default=False)
# A 429 without Retry-After pauses the client this long.
DEFAULT_PAUSE = 1.0
# Successful answers in a row, with no 429 between, that end a throttling episode.
QUIET_ANSWERS = 10

# Polling. The floor and the ceiling are fractions and multiples of ``poll_interval``.
FLOOR_FRACTION = 0.25
CEILING_TIMES = 150.0
# Once a job may have finished, it is polled again after this fraction of its age: a finished
# job waits at most about that share of its duration to be noticed.
GROWTH = 0.08
# The scout, polling alone while nothing is known, grows its gaps a little faster.
SCOUT_GROWTH = 0.15
# The first poll of a job comes when this share of this run's jobs had finished at its age.
FIRST_QUANTILE = 0.3
JITTER = 0.05  # each delay is spread by this fraction either way, so polls do not bunch
_KEPT = 1024  # durations kept (the latest), enough for stable quantiles
_POSITION_WEIGHT = 0.3  # weight of the newest queue-drain observation in its moving average
# Queue positions and moves are read up to this: a server's 400-digit integer times a float
# would overflow, and no queue is longer.
_MAX_POSITION = 1_000_000

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def check_rate(value: Any, where: str = "--rate") -> float:
    """A request rate: a finite number above 0; raises ComfysweepError in one line."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ComfysweepError(f"{where}: must be a finite number of requests a second above 0")
    return float(value)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``take`` reserves one in FIFO order."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = check_rate(rate, "rate")
        # Half a second's worth, at most DEFAULT_BURST: any one second then sees at most
        # 1.5 x rate requests (rate + burst), never a whole minute's saved up.
        self.burst = max(1, burst if burst is not None else min(DEFAULT_BURST, int(rate / 2)))
        self._tokens = float(self.burst)
        self._stamp: float | None = None

    def take(self, now: float) -> float:
        """Reserve a token; the seconds to wait before using it (0 when one is saved up)."""
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def ready(self, now: float) -> int:
        """Tokens saved up at ``now``: requests that may leave at once (none taken)."""
        tokens = self._tokens
        if self._stamp is not None:
            tokens = min(self.burst, tokens + (now - self._stamp) * self.rate)
        return max(0, int(tokens))

    def give_back(self) -> None:
        """A token taken but never used (its request was cancelled while it waited)."""
        self._tokens = min(self.burst, self._tokens + 1.0)


class Pacer:
    """One client's pace: the rate limit, the 429 pause, and the submit concurrency (AIMD)."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        *,
        burst: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        quiet: int = QUIET_ANSWERS,
    ) -> None:
        self.bucket = TokenBucket(rate, burst)
        self._clock = clock
        self._sleep = sleep
        self._quiet = quiet
        self.paused_until = 0.0
        self._cut_until = 0.0  # 429s before this answer requests sent before the last cut
        self._configured: int | None = None  # the run's concurrency, once the runner asked
        self._limit: int | None = None  # None: the configured concurrency
        self._grown = 0  # successes since the limit last grew
        self._episode: tuple[float, int] | None = None  # (start, 429s) of a throttling episode
        self._calm = 0  # successes since the last 429
        self.on_change: Callable[[], None] | None = None  # called when the limit grows

    async def wait(self) -> None:
        """Return when a request may leave: after any 429 pause, then one token of the bucket.

        At once, taking nothing, for the first request of a task inside ``prepaid()``: its
        caller took the token (and waited out the pause) before it.
        """
        if _PREPAID.get():
            _PREPAID.set(False)
            return
        await self._paused()
        delay = self.bucket.take(self._clock())
        try:
            if delay > 0:
                await self._sleep(delay)
            await self._paused()  # a 429 meanwhile pauses this one too
        except BaseException:  # cancelled while waiting: the next request may have its token
            self.bucket.give_back()
            raise

    async def _paused(self) -> None:
        while (left := self.paused_until - self._clock()) > 0:
            await self._sleep(left)

    def submit_limit(self, configured: int) -> int:
        """Submits in flight at once: the run's concurrency, shrunk while the API throttles."""
        self._configured = configured
        return configured if self._limit is None else min(self._limit, configured)

    def answered(
        self, status: int, retry_after: float | None = None, *, submit: bool = False
    ) -> None:
        """Learn from one answer: a 429 pauses everything, a success may end the episode, and a
        successful ``submit`` grows the submit concurrency back."""
        if status == 429:
            self._refused(retry_after)
        elif 200 <= status < 300:
            self._succeeded(submit)

    def _refused(self, retry_after: float | None) -> None:
        now = self._clock()
        pause = DEFAULT_PAUSE if retry_after is None else retry_after
        pause = min(max(pause, 0.0), RETRY_AFTER_CAP)
        # Not an answer to a request sent before the last cut (an empty pause, Retry-After: 0,
        # still waits a second: requests in flight together are one round, cut once).
        fresh = now >= self._cut_until
        self.paused_until = max(self.paused_until, now + pause)
        self._calm = self._grown = 0
        if fresh and self._configured is not None:
            current = self.submit_limit(self._configured)
            self._limit = max(1, current // 2)
            self._cut_until = now + max(pause, DEFAULT_PAUSE)
        if self._episode is None:
            self._episode = (now, 1)
            submits = "submit" if self._limit == 1 else "submits"
            limit = f"; at most {self._limit} {submits} in flight" if self._limit else ""
            log.warning(
                "the API is rate limiting (HTTP 429): every request waits %s s%s",
                f"{pause:g}",
                limit,
            )
        else:
            self._episode = (self._episode[0], self._episode[1] + 1)

    def _succeeded(self, submit: bool) -> None:
        self._calm += 1
        if self._episode is not None and self._calm >= self._quiet:
            started, refusals = self._episode
            self._episode = None
            log.info(
                "the API stopped rate limiting: %d answer(s) HTTP 429 over %.0f s",
                refusals,
                self._clock() - started,
            )
        if not submit or self._limit is None or self._configured is None:
            return
        if self._clock() < self.paused_until:
            return
        self._grown += 1
        if self._grown >= self._limit:  # one more slot per `limit` submits: additive increase
            self._grown = 0
            self._limit += 1
            if self._limit >= self._configured:
                self._limit = None
            if self.on_change is not None:
                self.on_change()

    def ready(self) -> int:
        """Requests that may leave at once: none during a 429 pause, else the bucket's tokens."""
        now = self._clock()
        return 0 if self.paused_until > now else self.bucket.ready(now)

    def take_ready(self, most: int) -> int:
        """Take up to ``most`` of the tokens saved up now, without waiting (none during a 429
        pause): requests that may leave at once, counted as sent (``prepaid``)."""
        now = self._clock()
        if self.paused_until > now:
            return 0
        n = min(most, self.bucket.ready(now))
        for _ in range(n):
            self.bucket.take(now)
        return n

    def give_back(self) -> None:
        """A token taken (``take_ready``, ``wait``) for a request that will not be made."""
        self.bucket.give_back()

    def pause_left(self) -> float:
        """Seconds until the 429 pause ends (0 when none is under way)."""
        return max(0.0, self.paused_until - self._clock())

    @property
    def throttling(self) -> bool:
        """A throttling episode is under way."""
        return self._episode is not None


@contextlib.contextmanager
def prepaid() -> Iterator[None]:
    """The first request the current task makes inside uses a token its caller took already
    (``Pacer.take_ready`` or ``wait``): the runner takes a submit's token before claiming its
    job, so the POST of a claimed job never waits behind the rate."""
    mark = _PREPAID.set(True)
    try:
        yield
    finally:
        _PREPAID.reset(mark)


class PollPlanner:
    """When to poll each job of a run: from observed durations and queue positions.

    ``poll_interval`` is the user's setting: the gap between polls until a duration is known
    (the scout's), and the scale of the floor (``FLOOR_FRACTION`` of it) and of the ceiling
    (``CEILING_TIMES`` it) that bound every gap.
    """

    def __init__(
        self,
        poll_interval: float,
        *,
        prior: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.poll_interval = poll_interval
        self.floor = poll_interval * FLOOR_FRACTION
        self.ceiling = poll_interval * CEILING_TIMES
        self._rng = rng or random.Random()
        self._durations: list[float] = []
        self._order: list[float] = []  # the same, in arrival order, to drop the oldest
        self.prior: float | None = None
        self.remember(prior)
        self._scout: object | None = None
        self._per_position: float | None = None  # seconds for the queue to move one place
        self._news = anyio.Event()

    @property
    def known(self) -> bool:
        """A duration is known: observed in this run, or remembered from the last."""
        return bool(self._durations) or self.prior is not None

    def observe(self, seconds: float) -> None:
        """A job of this run finished after ``seconds`` (submit to result)."""
        if not math.isfinite(seconds) or seconds <= 0:
            return
        first = not self.known
        bisect.insort(self._durations, seconds)
        self._order.append(seconds)
        if len(self._order) > _KEPT:
            old = self._order.pop(0)
            del self._durations[bisect.bisect_left(self._durations, old)]
        if first:
            self._tell()

    def observe_queue(self, moved: int, seconds: float) -> None:
        """A queued job moved ``moved`` places forward in ``seconds``."""
        if moved <= 0 or seconds <= 0:
            return
        sample = seconds / min(moved, _MAX_POSITION)
        old = self._per_position
        self._per_position = sample if old is None else old + _POSITION_WEIGHT * (sample - old)

    def leave(self, job: object) -> None:
        """A job stopped being tracked: if it was the scout, another one takes over."""
        if self._scout == job:
            self._scout = None
            self._tell()

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the durations seen (the prior when none was)."""
        if not self._durations:
            return self.prior
        index = min(len(self._durations) - 1, max(0, math.ceil(q * len(self._durations)) - 1))
        return self._durations[index]

    def may_have_ended(self, age: float) -> bool:
        """A job ``age`` seconds old may have ended: nothing is known, or some jobs took less
        than its first poll's share of durations (a resumed job younger waits for that poll)."""
        first = self.quantile(FIRST_QUANTILE)
        return first is None or age >= first

    def delay(self, job: object, age: float, queue_position: int | None = None) -> float:
        """Seconds until ``job`` (submitted ``age`` seconds ago) is polled next."""
        if not self.known:
            if self._scout is None:
                self._scout = job
            if self._scout != job:
                return self.ceiling  # woken early by the scout's news
            gap = max(self.poll_interval, SCOUT_GROWTH * age)
        else:
            first = self.quantile(FIRST_QUANTILE)
            assert first is not None
            # Aimed just after that age, never before: a job submitted a moment before its
            # server clock started would otherwise be polled a moment too soon.
            target = first * (1.0 + JITTER + self._rng.uniform(-JITTER, JITTER)) - age
            gap = GROWTH * age * (1.0 + self._rng.uniform(-JITTER, JITTER))
            gap = max(target, gap)
        if queue_position and self._per_position is not None:
            gap = max(gap, min(max(queue_position, 0), _MAX_POSITION) * self._per_position)
        return min(max(gap, self.floor), self.ceiling)

    def remember(self, seconds: float | None) -> None:
        """The prior: a duration remembered from an earlier run (used until one is observed)."""
        if seconds is not None and math.isfinite(seconds) and seconds > 0:
            self.prior = seconds

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False when woken sooner by news (a first duration, a new scout)."""
        if self.known:
            await anyio.sleep(seconds)
            return True
        with anyio.move_on_after(seconds) as scope:
            await self._news.wait()
        return scope.cancelled_caught

    def _tell(self) -> None:
        self._news.set()
        self._news = anyio.Event()


def server_duration(raw: dict[str, Any]) -> float | None:
    """``finished_at - created_at`` of a result answer, in seconds, when it says both."""
    try:
        created = datetime.fromisoformat(str(raw["created_at"]))
        finished = datetime.fromisoformat(str(raw["finished_at"]))
        seconds = (finished - created).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
