"""Pacing without the network: the token bucket, the 429 pause and AIMD, the poll planner.

Every clock here is driven by the test: nothing sleeps.
"""

from __future__ import annotations

import logging
import random

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.errors import ComfysweepError
from orchestrator.pacing import (
    CEILING_TIMES,
    FLOOR_FRACTION,
    GROWTH,
    JITTER,
    QUIET_ANSWERS,
    Pacer,
    PollPlanner,
    TokenBucket,
    check_rate,
    server_duration,
)


class Clock:
    """A clock that moves only when slept on (or told)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- the token bucket ---------------------------------------------------------------------------


def test_the_bucket_lets_a_burst_through_then_one_request_per_token() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    # Then reservations queue in order, half a second apart.
    assert [bucket.take(0.0) for _ in range(3)] == [0.5, 1.0, 1.5]


def test_the_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(0.05) == pytest.approx(0.05)  # half a token back after 50 ms
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


@pytest.mark.anyio
async def test_the_pacer_spaces_requests_at_its_rate() -> None:
    clock = Clock()
    pacer = Pacer(rate=4.0, burst=1, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await pacer.wait()
    assert clock.now - 1000.0 == pytest.approx(1.0)  # 5 requests at 4/s: 1 s after the first


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_a_rate_must_be_finite_and_positive(bad: object) -> None:
    with pytest.raises(ComfysweepError, match="--rate: must be a finite number"):
        check_rate(bad)


@pytest.mark.parametrize("bad", ["0", "-2", "nan", "inf", "fast"])
def test_a_bad_rate_flag_is_one_line(bad: str) -> None:
    result = CliRunner().invoke(cli, ["run", "nowhere.yaml", "--rate", bad])
    assert result.exit_code == 2
    assert "--rate" in result.output
    assert "Traceback" not in result.output


# -- 429: one pause for everyone, AIMD, one line per episode --------------------------------------


@pytest.mark.anyio
async def test_a_429_pauses_every_request_for_its_retry_after() -> None:
    clock = Clock()
    pacer = Pacer(rate=1000.0, clock=clock, sleep=clock.sleep)
    pacer.answered(429, 3.0)
    await pacer.wait()  # any task, not only the one refused
    assert clock.now == pytest.approx(1003.0)
    await pacer.wait()
    assert clock.now == pytest.approx(1003.0)  # the pause is over: no further wait


@pytest.mark.anyio
async def test_a_429_without_retry_after_pauses_one_second() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.answered(429)
    await pacer.wait()
    assert clock.now == pytest.approx(1001.0)


def test_repeated_429s_halve_the_submit_concurrency_and_successes_grow_it_back() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    assert pacer.submit_limit(16) == 16
    pacer.answered(429, 2.0)
    assert pacer.submit_limit(16) == 8
    pacer.answered(429, 2.0)  # an answer to a request sent before the pause: no second cut
    assert pacer.submit_limit(16) == 8
    clock.now += 2.0
    pacer.answered(429, 2.0)  # refused again after the pause: halved again
    assert pacer.submit_limit(16) == 4
    pacer.answered(200, submit=True)  # still paused: nothing grows
    assert pacer.submit_limit(16) == 4
    clock.now += 2.0
    for _ in range(10):
        pacer.answered(200)  # polls and downloads do not make room for submits
    assert pacer.submit_limit(16) == 4
    limits = []
    for _ in range(4 + 5 + 6 + 7 + 8 + 9 + 10 + 11 + 12 + 13 + 14 + 15):
        pacer.answered(200, submit=True)
        limits.append(pacer.submit_limit(16))
    # Additive increase: one more slot per `limit` successful submits, back to the setting.
    assert limits[3] == 5
    assert limits[3 + 5] == 6
    assert limits[-1] == 16
    assert sorted(set(limits)) == list(range(4, 17))


def test_the_limit_never_goes_below_one() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.submit_limit(2)
    for _ in range(5):
        pacer.answered(429, 1.0)
        clock.now += 1.0
    assert pacer.submit_limit(2) == 1


def test_a_throttling_episode_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.submit_limit(8)
    with caplog.at_level(logging.INFO, logger="comfysweep.pacing"):
        for _ in range(5):  # five tasks refused at once
            pacer.answered(429, 2.0)
        clock.now += 2.0
        pacer.answered(429, 2.0)
        clock.now += 2.0
        for _ in range(QUIET_ANSWERS * 3):
            pacer.answered(200)
    lines = [r.getMessage() for r in caplog.records if r.name == "comfysweep.pacing"]
    assert lines == [
        "the API is rate limiting (HTTP 429): every request waits 2 s; at most 4 submits in flight",
        "the API stopped rate limiting: 6 answer(s) HTTP 429 over 4 s",
    ]
    assert not pacer.throttling


# -- the poll planner -----------------------------------------------------------------------------


def test_until_a_duration_is_known_one_job_scouts_and_the_others_wait() -> None:
    planner = PollPlanner(2.0, rng=random.Random(1))
    assert planner.delay("a", 0.0) == 2.0  # the scout polls at the poll interval
    assert planner.delay("b", 0.0) == 2.0 * CEILING_TIMES  # until the scout's news
    assert planner.delay("a", 100.0) == pytest.approx(15.0)  # its gaps grow with its age
    planner.leave("a")
    assert planner.delay("b", 5.0) == 2.0  # another job takes over


def test_a_remembered_duration_is_the_prior() -> None:
    planner = PollPlanner(2.0, prior=60.0, rng=random.Random(1))
    assert 60.0 <= planner.delay("a", 0.0) <= 60.0 * (1 + 2 * JITTER)
    assert 60.0 <= planner.delay("b", 0.0) <= 60.0 * (1 + 2 * JITTER)  # no scout needed


def test_the_first_poll_comes_at_an_observed_duration_never_before() -> None:
    planner = PollPlanner(2.0, rng=random.Random(3))
    for seconds in (18.0, 20.0, 20.0, 21.0, 22.0, 30.0, 40.0):
        planner.observe(seconds)
    first = planner.quantile(0.3)
    assert first == 20.0
    for _ in range(200):
        assert first <= planner.delay("a", 0.0) <= first * (1 + 2 * JITTER)
        # Later in its life, the job is polled at a share of its age.
        gap = planner.delay("a", 50.0)
        assert GROWTH * 50 * (1 - JITTER) <= gap <= GROWTH * 50 * (1 + JITTER)


def test_gaps_stay_between_the_floor_and_the_ceiling() -> None:
    planner = PollPlanner(2.0, rng=random.Random(5))
    planner.observe(0.1)
    assert planner.delay("a", 0.5) == 2.0 * FLOOR_FRACTION  # 5% of 0.5 s is below the floor
    planner = PollPlanner(2.0, rng=random.Random(5))
    planner.observe(36000.0)  # ten-hour jobs are still looked at every 5 minutes
    assert planner.delay("a", 0.0) == 2.0 * CEILING_TIMES


def test_a_queued_job_waits_for_the_queue_to_move() -> None:
    planner = PollPlanner(2.0, rng=random.Random(7))
    planner.observe(20.0)
    planner.observe_queue(moved=2, seconds=10.0)  # 5 s a place
    assert planner.delay("a", 25.0, queue_position=6) >= 30.0
    assert planner.delay("a", 25.0, queue_position=None) < 5.0


def test_nonsense_durations_are_ignored() -> None:
    planner = PollPlanner(2.0)
    for seconds in (0.0, -3.0, float("nan"), float("inf")):
        planner.observe(seconds)
    assert not planner.known


def test_the_server_duration_comes_from_the_result_timestamps() -> None:
    raw = {
        "created_at": "2026-11-24T10:00:00.000000+00:00",
        "finished_at": "2026-11-24T10:03:12.500000+00:00",
    }
    assert server_duration(raw) == 192.5
    assert server_duration({"created_at": raw["created_at"]}) is None
    assert server_duration({**raw, "finished_at": "yesterday"}) is None
    assert server_duration({**raw, "finished_at": "2026-11-24T10:00:00"}) is None  # naive vs aware


def test_a_huge_queue_position_is_a_long_wait_not_a_crash() -> None:
    # A JSON integer of 400 digits is read as a Python int: times a float, it overflowed.
    planner = PollPlanner(2.0, rng=random.Random(8))
    planner.observe(20.0)
    planner.observe_queue(moved=10**400, seconds=1.0)
    planner.observe_queue(moved=2, seconds=10.0)
    assert planner.delay("a", 1.0, queue_position=10**400) == 2.0 * CEILING_TIMES
    assert planner.delay("a", 1.0, queue_position=-(10**400)) <= 2.0 * CEILING_TIMES


@pytest.mark.anyio
async def test_a_request_cancelled_while_it_waits_gives_its_token_back() -> None:
    # Ctrl-C, a stop or a timeout cancels a request waiting for its token: the token was never
    # used, so the next request must not wait for it as well.
    import anyio

    clock = Clock()
    waiting = anyio.Event()

    async def forever(seconds: float) -> None:
        waiting.set()
        await anyio.sleep_forever()

    pacer = Pacer(rate=1.0, burst=1, clock=clock, sleep=forever)
    await pacer.wait()  # the one saved token
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(pacer.wait)  # waits one second for the next token
        await waiting.wait()
        tasks.cancel_scope.cancel()
    pacer._sleep = clock.sleep
    await pacer.wait()
    assert clock.slept == [1.0]  # not 2.0: the cancelled request's token came back


def test_a_burst_of_429s_with_retry_after_zero_halves_the_limit_once() -> None:
    # Five requests in flight refused at once with `Retry-After: 0`: each looked "sent after the
    # pause" (the pause was empty), and the limit fell from 16 to 1 in one moment. One cut per
    # round: a 429 within a second (or the pause, if longer) of the last cut cuts nothing more.
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.submit_limit(16)
    for _ in range(5):
        pacer.answered(429, 0.0)
    assert pacer.submit_limit(16) == 8
    clock.now += 1.0
    pacer.answered(429, 0.0)
    assert pacer.submit_limit(16) == 4


def test_the_throttling_line_counts_one_submit_in_the_singular(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    pacer.submit_limit(2)
    with caplog.at_level(logging.INFO, logger="comfysweep.pacing"):
        pacer.answered(429, 3.0)
    assert [r.getMessage() for r in caplog.records] == [
        "the API is rate limiting (HTTP 429): every request waits 3 s; at most 1 submit in flight"
    ]
