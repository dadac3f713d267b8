"""Pacing against the emulator: requests counted by the emulator, 429s that pause every task,
and the emulator's own pacing faults (rate_cap) and duration spread."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.emulator.farm import gpu_seconds
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec

SPEC = """\
name: {name}
model: community/wan-2-2/vace-fun
inputs:
  prompt: "a red fox in the snow"
  image: https://example.com/fox.png
  resolution: 480x480 (1:1)
  frames: 81
  fps: 16
  steps: 4
axes:
  seed: {{count: 8, from: 1}}
run:
  concurrency: 4
  output: {output}
  poll_interval: 0.02
  rate: 1000
"""
SECONDS = gpu_seconds({"25_value": 81, "47_value": 4})  # 41.3 simulated seconds a job


def _run(spec: Path, emu: Emulator, **overrides: Any) -> Any:
    return run_sweep(
        spec,
        base_url=emu.base_url,
        token=emu.token,
        overrides=Overrides(**overrides),
        retry=RetryPolicy(wait=False),
    )


def test_polling_costs_few_requests_per_finished_job(tmp_path: Path) -> None:
    # Jobs of ~0.4 s polled every 0.02 s: the old loop (status every poll, then result) spent
    # about 20 status polls a job; the planner waits for the jobs' observed duration.
    config = EmulatorConfig(workers=4, speed=SECONDS / 0.4, duration_jitter=0.1)
    spec = write_spec(tmp_path, body=SPEC)
    with Emulator(config) as emu:
        report = _run(spec, emu)
        requests = emu.requests()
    assert report.counts["done"] == 8
    assert "status" not in requests  # the result endpoint alone
    assert requests["submit"] == requests["download"] == 8
    per_job = sum(requests.values()) / 8
    assert per_job <= 8.0, requests


def test_a_429_pauses_every_task_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pause = 1.0
    profile = FaultProfile.parse(
        {
            "seed": 3,
            "faults": {
                "rate_limit": {
                    "rate": 1.0,
                    "limit": 1,
                    "endpoints": ["result"],
                    "retry_after": pause,
                }
            },
        }
    )
    config = EmulatorConfig(workers=4, speed=SECONDS / 0.3, faults=profile)
    spec = write_spec(tmp_path, body=SPEC)
    with caplog.at_level(logging.INFO, logger="comfysweep"), Emulator(config) as emu:
        report = _run(spec, emu)
        assert emu.state is not None
        seen = list(emu.state.request_log)
    assert report.counts["done"] == 8
    (refused,) = [at for at, _, status in seen if status == 429]
    # Requests already on their way when the 429 left may still arrive a moment after it; from
    # then until the pause ends, no task sends anything (the emulator's clock says when).
    during = [(at - refused, what) for at, what, _ in seen if refused + 0.25 < at < refused + pause]
    assert during == []
    assert any(at >= refused + pause for at, _, _ in seen)  # the run went on afterwards
    lines = [r.getMessage() for r in caplog.records if r.name == "comfysweep.pacing"]
    assert len(lines) == 2, lines
    assert lines[0] == (
        "the API is rate limiting (HTTP 429): every request waits 1 s; at most 2 submits in flight"
    )
    assert lines[1].startswith("the API stopped rate limiting: 1 answer(s) HTTP 429 over ")


def test_the_rate_setting_limits_requests_per_second(tmp_path: Path) -> None:
    # rate_cap answers 429 past 20 requests in any second. Eight jobs submitted at once, ending
    # together, downloaded together, make more than that in their first half second; at 12 a
    # second (bursts of 6) no second holds more than 18.
    profile = FaultProfile.parse({"faults": {"rate_cap": {"rate": 1.0, "per_second": 20}}})
    config = EmulatorConfig(workers=8, speed=SECONDS / 0.3, faults=profile)
    spec = write_spec(tmp_path, body=SPEC.replace("concurrency: 4", "concurrency: 8"))
    with Emulator(config) as emu:
        report = _run(spec, emu, rate=12.0)
        ledger = emu.ledger()
    assert report.counts["done"] == 8
    assert ledger["faults_fired"]["rate_cap"] == 0


def test_rate_cap_answers_429_past_its_rate() -> None:
    profile = FaultProfile.parse(
        {"faults": {"rate_cap": {"rate": 1.0, "per_second": 3, "retry_after": 2}}}
    )
    clock_time = [5000.0]
    config = EmulatorConfig(faults=profile, clock=lambda: clock_time[0])
    with Emulator(config) as emu:
        with httpx.Client(headers={"Authorization": f"Bearer {emu.token}"}) as http:
            url = f"{emu.base_url}/models/community/wan-2-2/vace-fun"
            codes = [http.get(url).status_code for _ in range(5)]
            refused = http.get(url)
            clock_time[0] += 1.5  # a second later the window is empty again
            after = http.get(url).status_code
        counted = emu.requests()
    assert codes == [200, 200, 200, 429, 429]
    assert refused.headers["retry-after"] == "2"
    assert after == 200
    assert counted == {"catalog": 7}


def test_duration_jitter_is_seeded_by_the_inputs_and_off_by_default() -> None:
    from orchestrator.emulator.farm import Farm
    from orchestrator.emulator.ledger import Account

    def durations(jitter: float, sha: str, n: int = 1) -> list[float]:
        farm = Farm(1, 1.0, lambda: 0.0, {}, 100.0, jitter=jitter, seed=4)
        account = Account("a", 100.0)
        inputs = {"25_value": 81, "47_value": 4}
        return [farm.submit(account, "m", inputs, sha, frozenset()).duration for _ in range(n)]

    assert durations(0.0, "x") == [SECONDS]
    same = durations(0.2, "x", 3)
    assert len(set(same)) == 1  # the same inputs take the same time
    spread = {durations(0.2, f"input-{i}")[0] for i in range(50)}
    assert len(spread) == 50
    assert all(SECONDS * 0.8 <= d <= SECONDS * 1.2 for d in spread)


@pytest.mark.anyio
async def test_the_client_counts_every_request_it_sends_retries_and_downloads_too(
    tmp_path: Path,
) -> None:
    from orchestrator.client import ModelApiClient, RemoteState
    from orchestrator.models import get_model
    from orchestrator.pacing import Pacer

    inputs = get_model("community/wan-2-2/vace-fun").complete(
        {"56_text": "a fox", "118_image": "https://example.com/fox.png"}
    )
    # The first result is refused once (429): its retry is a request too.
    profile = FaultProfile.parse(
        {
            "faults": {
                "rate_limit": {"rate": 1.0, "limit": 1, "endpoints": ["result"], "retry_after": 0}
            }
        }
    )
    with Emulator(EmulatorConfig(speed=1e6, faults=profile)) as emu:
        api = ModelApiClient(
            emu.base_url, emu.token, retry=RetryPolicy(wait=False), pacer=Pacer(rate=1000.0)
        )
        async with api:
            submitted = await api.submit("community/wan-2-2/vace-fun", inputs)
            result = await api.result(submitted.request_id)
            while result.state is not RemoteState.SUCCEEDED:
                result = await api.result(submitted.request_id)
            await api.download(result.urls[0], tmp_path / "out.part")
        counted = emu.requests()
    assert api.requests_sent == sum(counted.values())
    assert counted["result"] >= 2  # the refused one and its retry


def test_a_job_resumed_in_flight_is_polled_for_its_real_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A killed run left a job queued, submitted a minute ago: the next run's planner must see
    # it a minute old (its next poll a share of that age), not as a job submitted just now
    # (which waits a whole duration again, and teaches the planner a duration too short).
    from datetime import UTC, datetime, timedelta

    from orchestrator.client import ModelApiClient
    from orchestrator.errors import ServerError
    from orchestrator.pacing import PollPlanner
    from orchestrator.store import JobState, Store

    body = SPEC.replace("count: 8", "count: 1").replace("concurrency: 4", "concurrency: 1")
    spec = write_spec(tmp_path, body=body)
    now = [5000.0]  # the emulator's clock: the job runs until the test moves it
    with Emulator(EmulatorConfig(workers=1, clock=lambda: now[0])) as emu:
        real_result = ModelApiClient.result

        async def unreadable(self: ModelApiClient, request_id: str, **_: Any) -> Any:
            raise ServerError("result: unreadable answer")

        monkeypatch.setattr(ModelApiClient, "result", unreadable)
        stopped = _run(spec, emu)
        assert "polling keeps failing" in (stopped.stop_reason or "")
        monkeypatch.setattr(ModelApiClient, "result", real_result)
        (store,) = tmp_path.glob("**/comfysweep.db")
        with Store.open(store) as db:
            assert len(list(db.jobs([JobState.QUEUED]))) == 1
        minute_ago = (datetime.now(UTC) - timedelta(seconds=60)).strftime("%Y-%m-%d %H:%M:%S.%f")
        with sqlite3.connect(store) as conn:
            conn.execute("UPDATE jobs SET submitted_at = ?", (minute_ago,))
        ages: list[float] = []
        plan = PollPlanner.delay

        def delay(self: PollPlanner, job: object, age: float, queue: int | None = None) -> float:
            ages.append(age)
            now[0] += 2 * SECONDS  # the job ends before its next poll
            return min(plan(self, job, age, queue), 0.05)

        monkeypatch.setattr(PollPlanner, "delay", delay)
        report = _run(spec, emu)
    assert report.counts["done"] == 1
    assert ages
    assert min(ages) >= 55.0, ages


def test_a_result_endpoint_that_404s_until_the_end_does_not_lose_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The protocol says the result endpoint answers the state before the end; a server whose
    # result is 404 until then (a status-only server) must not have its jobs marked lost: the
    # status endpoint says the job is there, and it is polled until its result comes.
    from orchestrator.client import ModelApiClient
    from orchestrator.errors import RequestNotFound

    real_result = ModelApiClient.result

    async def not_yet(self: ModelApiClient, request_id: str, **kwargs: Any) -> Any:
        result = await real_result(self, request_id, **kwargs)
        if not result.state.terminal:
            raise RequestNotFound(f"result of {request_id}: HTTP 404, no result yet")
        return result

    monkeypatch.setattr(ModelApiClient, "result", not_yet)
    body = SPEC.replace("count: 8", "count: 2").replace("concurrency: 4", "concurrency: 2")
    spec = write_spec(tmp_path, body=body)
    with Emulator(EmulatorConfig(workers=2, speed=SECONDS / 0.3)) as emu:
        report = _run(spec, emu)
        requests = emu.requests()
    assert report.counts["done"] == 2, report.counts
    assert report.counts["lost"] == 0
    assert requests["submit"] == 2


def test_a_server_duration_longer_than_the_wait_is_not_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One result whose finished_at is centuries ahead (a skewed or broken server clock) taught
    # the planner a job takes centuries: every other job then waited for the ceiling. No job
    # takes longer than the run waited for it since its submit.
    from orchestrator.client import ModelApiClient
    from orchestrator.pacing import PollPlanner

    real_result = ModelApiClient.result

    async def skewed(self: ModelApiClient, request_id: str, **kwargs: Any) -> Any:
        result = await real_result(self, request_id, **kwargs)
        result.raw["finished_at"] = "9999-01-01T00:00:00+00:00"
        return result

    learned: list[float] = []
    observe = PollPlanner.observe

    def recorded(self: PollPlanner, seconds: float) -> None:
        learned.append(seconds)
        observe(self, seconds)

    monkeypatch.setattr(ModelApiClient, "result", skewed)
    monkeypatch.setattr(PollPlanner, "observe", recorded)
    spec = write_spec(tmp_path, body=SPEC.replace("count: 8", "count: 2"))
    with Emulator(EmulatorConfig(workers=4, speed=SECONDS / 0.3)) as emu:
        report = _run(spec, emu)
    assert report.counts["done"] == 2
    assert learned
    assert max(learned) < 60.0, learned


def test_a_submit_refused_by_429_past_its_retries_waits_and_tries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Seven 429s in a row on submit (one submit's six attempts, then one more): a few seconds
    # of throttling stopped the whole overnight run ("the API keeps refusing"). The client
    # pauses and the submit concurrency shrinks; the job goes back to pending and goes again.
    profile = FaultProfile.parse(
        {
            "faults": {
                "rate_limit": {"rate": 1.0, "limit": 7, "endpoints": ["submit"], "retry_after": 0}
            }
        }
    )
    config = EmulatorConfig(workers=4, speed=SECONDS / 0.3, faults=profile)
    body = SPEC.replace("count: 8", "count: 4").replace("concurrency: 4", "concurrency: 1")
    spec = write_spec(tmp_path, body=body)
    with Emulator(config) as emu:
        report = _run(spec, emu, rate=1000.0)
        ledger = emu.ledger()
        requests = emu.requests()
    assert report.stop_reason is None, report.stop_reason
    assert report.counts["done"] == 4
    assert ledger["faults_fired"]["rate_limit"] == 7
    assert requests["submit"] == 4 + 7
    assert set(ledger["submissions_by_input"].values()) == {1}  # each job paid once


def test_a_job_whose_polling_gave_up_teaches_no_duration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polling that gave up (or a job the API forgot) says nothing of how long a job takes: the
    # seconds until then were remembered as the model's duration, the next run's prior.
    from orchestrator import prices
    from orchestrator.client import ModelApiClient
    from orchestrator.errors import ServerError

    async def unreadable(self: ModelApiClient, request_id: str, **_: Any) -> Any:
        raise ServerError("result: unreadable answer")

    monkeypatch.setattr(ModelApiClient, "result", unreadable)
    body = SPEC.replace("count: 8", "count: 1").replace("concurrency: 4", "concurrency: 1")
    spec = write_spec(tmp_path, body=body)
    with Emulator(EmulatorConfig(workers=1, speed=SECONDS / 0.3)) as emu:
        report = _run(spec, emu)
        remembered = prices.last_duration("community/wan-2-2/vace-fun", api_base=emu.base_url)
    assert "polling keeps failing" in (report.stop_reason or "")
    assert remembered is None


def test_a_young_job_resumed_in_flight_waits_for_its_first_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run restarted right after a kill, with jobs of a known duration (100 s) just submitted:
    # each was polled at once (a burst of requests that can only say "running"); a job that
    # cannot have ended yet waits for its planned first poll.
    from orchestrator import prices
    from orchestrator.client import ModelApiClient
    from orchestrator.errors import ServerError
    from orchestrator.pacing import PollPlanner

    body = SPEC.replace("count: 8", "count: 1").replace("concurrency: 4", "concurrency: 1")
    spec = write_spec(tmp_path, body=body)
    now = [5000.0]  # the emulator's clock: the job runs until the test moves it
    with Emulator(EmulatorConfig(workers=1, clock=lambda: now[0])) as emu:
        real_result = ModelApiClient.result

        async def unreadable(self: ModelApiClient, request_id: str, **_: Any) -> Any:
            raise ServerError("result: unreadable answer")

        monkeypatch.setattr(ModelApiClient, "result", unreadable)
        assert "polling keeps failing" in (_run(spec, emu).stop_reason or "")
        prices.remember_duration("community/wan-2-2/vace-fun", 100.0, api_base=emu.base_url)
        events: list[str] = []

        async def result(self: ModelApiClient, request_id: str, **kwargs: Any) -> Any:
            events.append("result")
            return await real_result(self, request_id, **kwargs)

        plan = PollPlanner.delay

        def delay(self: PollPlanner, job: object, age: float, queue: int | None = None) -> float:
            events.append("planned")
            now[0] += 2 * SECONDS  # the job ends before its next poll
            return min(plan(self, job, age, queue), 0.05)

        monkeypatch.setattr(ModelApiClient, "result", result)
        monkeypatch.setattr(PollPlanner, "delay", delay)
        report = _run(spec, emu)
    assert report.counts["done"] == 1
    assert events[0] == "planned", events
