from __future__ import annotations

import email.utils

import pytest

from orchestrator.retry import RETRY_AFTER_CAP, RetryPolicy, describe, parse_retry_after


def test_backoff_grows_from_initial_and_is_capped() -> None:
    policy = RetryPolicy(initial=0.5, maximum=4.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_stays_within_its_bound() -> None:
    policy = RetryPolicy(initial=1.0, maximum=30.0, jitter=0.5)
    delays = [policy.delay(2) for _ in range(200)]
    assert all(2.0 <= d <= 2.5 for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(initial=0.5, maximum=30.0, jitter=0.0)
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert policy.delay(6, retry_after=0.0) == 0.0
    assert policy.delay(1, retry_after=10_000.0) == RETRY_AFTER_CAP


def test_wait_false_turns_every_wait_off() -> None:
    policy = RetryPolicy(wait=False)
    assert policy.delay(5) == 0.0
    assert policy.delay(1, retry_after=60.0) == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"initial": -1.0}, {"maximum": -1.0}, {"jitter": -0.1}]
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("5", 5.0), ("0", 0.0), (" 1.5 ", 1.5), ("-3", 0.0), ("", None), ("soon", None)],
)
def test_retry_after_in_seconds(header: str, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize("header", ["nan", "inf"])
def test_retry_after_rejects_non_finite_numbers(header: str) -> None:
    assert parse_retry_after(header) is None


def test_retry_after_as_an_http_date() -> None:
    now = 1_800_000_000.0
    future = email.utils.formatdate(now + 120, usegmt=True)
    past = email.utils.formatdate(now - 120, usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(120.0)
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after(None) is None


def test_retry_after_date_in_minus_zero_zone_counts_as_utc() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30).replace("+0000", "-0000")
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)


def test_describe_names_the_failure() -> None:
    assert describe(None) == "no error"
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ValueError("bad")) == "ValueError: bad"


@pytest.mark.anyio
async def test_retrying_stops_after_the_attempts_and_reraises_the_last_error() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"try {calls}")

    retrying = RetryPolicy(attempts=3, wait=False).retrying(lambda e: True, "flaky")
    with pytest.raises(ConnectionError, match="try 3"):
        await retrying(flaky)
    assert calls == 3


@pytest.mark.anyio
async def test_retrying_does_not_retry_what_the_predicate_refuses() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("no")

    retrying = RetryPolicy(attempts=5, wait=False).retrying(
        lambda e: isinstance(e, ConnectionError), "refused"
    )
    with pytest.raises(KeyError):
        await retrying(refused)
    assert calls == 1


@pytest.mark.anyio
async def test_a_call_that_succeeds_at_once_builds_no_tenacity_controller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator import retry

    built: list[object] = []
    real = retry.AsyncRetrying

    def counted(*args: object, **kwargs: object) -> object:
        built.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(retry, "AsyncRetrying", counted)
    policy = RetryPolicy(attempts=3, wait=False)
    calls = 0

    async def once_flaky(answer: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("dropped")
        return answer

    assert await policy.retrying(lambda e: True, "call")(once_flaky, "a") == "a"
    assert built == []  # the common case: no controller, no retry state
    assert await policy.retrying(lambda e: True, "call")(once_flaky, "b") == "b"
    assert (calls, len(built)) == (3, 1)  # the failure, then tenacity's retry
