"""The client against the embedded emulator: the full round trip, and each fault it can inject."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.client import ModelApiClient, RemoteState, Result, Submitted
from orchestrator.emulator import Emulator, EmulatorConfig, FaultProfile
from orchestrator.errors import (
    AuthError,
    ModelNotFound,
    OutcomeUnknown,
    OutputExpired,
    RequestNotFound,
    ValidationFailed,
)
from orchestrator.models import get_model
from orchestrator.retry import RetryPolicy

MODEL = "community/wan-2-2/vace-fun"
FAST = 1000.0


def inputs(**overrides: Any) -> dict[str, Any]:
    raw = {
        "56_text": "a red fox in the snow",
        "118_image": "https://example.com/fox.png",
        "4_valuex3_value": "480x480 (1:1)",
        **overrides,
    }
    return get_model(MODEL).complete(raw)


@contextmanager
def emulator(faults: dict[str, Any] | None = None, **config: Any) -> Iterator[Emulator]:
    profile = FaultProfile.parse({"faults": faults}) if faults else None
    config.setdefault("speed", FAST)
    with Emulator(EmulatorConfig(faults=profile, **config)) as emu:
        yield emu


def client(emu: Emulator, token: str | None = None) -> ModelApiClient:
    return ModelApiClient(emu.base_url, token or emu.token, retry=RetryPolicy(wait=False))


async def finish(api: ModelApiClient, submitted: Submitted) -> Result:
    """Poll like the runner does until the job ends, then read its result."""
    with anyio.fail_after(30):
        while True:
            status = await api.status(submitted.request_id)
            if status.state is RemoteState.COMPLETED or status.state.terminal:
                return await api.result(submitted.request_id)
            await anyio.sleep(0.05)


async def reach(api: ModelApiClient, request_id: str, state: RemoteState) -> None:
    with anyio.fail_after(30):
        while True:
            if (await api.status(request_id)).state is state:
                return
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_round_trip_submit_poll_result_download(tmp_path: Path) -> None:
    with emulator() as emu:
        async with client(emu) as api:
            info = await api.model(MODEL)
            submitted = await api.submit(MODEL, inputs())
            result = await finish(api, submitted)
            assert result.state is RemoteState.SUCCEEDED
            assert len(result.urls) == 1
            done = await api.download(result.urls[0], tmp_path / "out.mp4.part")
        ledger = emu.ledger()
    data = done.path.read_bytes()
    assert data[4:8] == b"ftyp"
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert done.size == len(data)
    assert info.base_price_usd is not None
    assert info.price_unit in ("second", "output")
    [job] = ledger["jobs"]
    assert job["request_id"] == submitted.request_id
    assert job["downloads"] == 1
    assert result.cost == pytest.approx(job["cost"])


@pytest.mark.anyio
async def test_dropped_after_create_is_unknown_and_created_once() -> None:
    with emulator({"drop_after_create": {"rate": 1.0, "limit": 1}}) as emu:
        async with client(emu) as api:
            with pytest.raises(OutcomeUnknown):
                await api.submit(MODEL, inputs())
        ledger = emu.ledger()
    assert len(ledger["jobs"]) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["http_500", "http_503_bare", "proxy_html", "error_200"])
async def test_server_errors_on_submit_are_unknown_and_not_retried(fault: str) -> None:
    with emulator({fault: {"rate": 1.0, "limit": 1, "endpoints": ["submit"]}}) as emu:
        async with client(emu) as api:
            with pytest.raises(OutcomeUnknown):
                await api.submit(MODEL, inputs())
        ledger = emu.ledger()
    assert ledger["jobs"] == []  # the fault fires once: a retry would have created a job


@pytest.mark.anyio
async def test_rate_limited_submit_is_retried_and_created_once() -> None:
    limit = {"rate": 1.0, "limit": 2, "endpoints": ["submit"], "retry_after": 0}
    with emulator({"rate_limit": limit}) as emu:
        async with client(emu) as api:
            await api.submit(MODEL, inputs())
        ledger = emu.ledger()
    assert len(ledger["jobs"]) == 1
    assert ledger["faults_fired"]["rate_limit"] == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fault", ["http_500", "http_503_bare", "proxy_html", "error_200", "rate_limit"]
)
async def test_reads_ride_out_transient_faults(fault: str) -> None:
    settings: dict[str, Any] = {"rate": 1.0, "limit": 2, "endpoints": ["status", "result"]}
    if fault == "rate_limit":
        settings["retry_after"] = 0
    with emulator({fault: settings}) as emu:
        async with client(emu) as api:
            submitted = await api.submit(MODEL, inputs())
            result = await finish(api, submitted)
        ledger = emu.ledger()
    assert result.state is RemoteState.SUCCEEDED
    assert ledger["faults_fired"][fault] == 2


@pytest.mark.anyio
async def test_truncated_download_is_retried(tmp_path: Path) -> None:
    with emulator({"truncated_download": {"rate": 1.0, "limit": 1}}) as emu:
        async with client(emu) as api:
            result = await finish(api, await api.submit(MODEL, inputs()))
            done = await api.download(result.urls[0], tmp_path / "out.part")
    assert done.path.read_bytes()[4:8] == b"ftyp"


@pytest.mark.anyio
async def test_expired_output(tmp_path: Path) -> None:
    with emulator({"early_expiry": 1.0}) as emu:
        async with client(emu) as api:
            result = await finish(api, await api.submit(MODEL, inputs()))
            with pytest.raises(OutputExpired):
                await api.download(result.urls[0], tmp_path / "out.part")
    assert not (tmp_path / "out.part").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["fail_string", "fail_object", "fail_list"])
async def test_failed_jobs_keep_their_error(fault: str) -> None:
    with emulator({fault: 1.0}) as emu:
        async with client(emu) as api:
            result = await finish(api, await api.submit(MODEL, inputs()))
    assert result.state is RemoteState.FAILED
    assert result.error is not None
    assert result.error_message
    assert "emulated" in result.error_message
    assert result.urls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "fault",
    ["spell_pending", "spell_processing", "spell_succeeded", "spell_completed", "bare_output"],
)
async def test_other_spellings_and_shapes(fault: str) -> None:
    with emulator({fault: 1.0}) as emu:
        async with client(emu) as api:
            result = await finish(api, await api.submit(MODEL, inputs()))
    assert result.state is RemoteState.SUCCEEDED
    assert len(result.urls) == 1


@pytest.mark.anyio
async def test_refusals() -> None:
    with emulator() as emu:
        async with client(emu, token="not-the-token") as stranger:
            with pytest.raises(AuthError):
                await stranger.submit(MODEL, inputs())
        async with client(emu) as api:
            with pytest.raises(ModelNotFound):
                await api.submit("nobody/nothing", inputs())
            with pytest.raises(ValidationFailed, match="38_value") as info:
                await api.submit(MODEL, {**inputs(), "38_value": 99})
            assert info.value.detail
            submitted = await api.submit(MODEL, inputs())
            emu.restart(forget=True)
            with pytest.raises(RequestNotFound):
                await api.status(submitted.request_id)
        ledger = emu.ledger()
    assert len(ledger["jobs"]) == 1


@pytest.mark.anyio
async def test_cancel_a_queued_job_but_not_a_running_one() -> None:
    frozen = time.time()  # the emulator's clock stands still: the running job stays running
    with emulator(workers=1, speed=1.0, clock=lambda: frozen) as emu:
        async with client(emu) as api:
            running = await api.submit(MODEL, inputs())
            queued = await api.submit(MODEL, inputs(**{"98_seed": 2}))
            await reach(api, running.request_id, RemoteState.RUNNING)
            waiting = await api.status(queued.request_id)
            assert waiting.state is RemoteState.QUEUED
            assert waiting.queue_position is not None
            assert (await api.cancel(queued.request_id)).cancelled
            assert not (await api.cancel(running.request_id)).cancelled
            assert (await api.status(queued.request_id)).state is RemoteState.CANCELLED
