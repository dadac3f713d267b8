"""The account balance: RunComfy's serverless API (and the emulator) answer it; never fatal."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from orchestrator.client import BALANCE_BASE, ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import TransportError
from orchestrator.retry import RetryPolicy

TOKEN = "tok-abcdef123456"


@pytest.fixture(autouse=True)
def _no_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_SERVERLESS_API_BASE", raising=False)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(speed=2000.0, balance_usd=42.5)) as emu:
        yield emu


@pytest.mark.anyio
async def test_the_emulator_answers_the_balance_of_the_tokens_account(emulator: Emulator) -> None:
    async with ModelApiClient(emulator.base_url, emulator.token) as client:
        assert client.balance_base == emulator.base_url.removesuffix("/v1") + "/prod/v2"
        assert await client.balance() == 42.5
        assert client.requests_sent == 1


def test_the_balance_route_answers_like_runcomfys(emulator: Emulator) -> None:
    answer = httpx.get(
        emulator.base_url.removesuffix("/v1") + "/prod/v2/balance",
        headers={"Authorization": f"Bearer {emulator.token}"},
    )
    assert answer.json() == {"balance_usd": 42.5, "currency": "USD"}


@pytest.mark.anyio
async def test_a_refused_balance_is_none_and_one_logged_line(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="comfysweep.client"):
        async with ModelApiClient(emulator.base_url, "wrong-token") as client:
            assert await client.balance() is None
    (record,) = [r for r in caplog.records if r.name == "comfysweep.client"]
    assert record.getMessage() == (
        "account balance: invalid or expired API token, or inactive account (HTTP 401, "
        "error_code 400004); check RUNCOMFY_API_TOKEN (the run goes on without it)"
    )


def _client(handler: httpx.MockTransport) -> ModelApiClient:
    return ModelApiClient(
        "https://model-api.runcomfy.net/v1",
        TOKEN,
        transport=handler,
        retry=RetryPolicy(wait=False),
    )


@pytest.mark.anyio
async def test_the_real_base_is_runcomfys_serverless_api_and_an_echoed_token_is_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": f"no balance for {TOKEN}"})

    with caplog.at_level(logging.WARNING, logger="comfysweep.client"):
        async with _client(httpx.MockTransport(handler)) as client:
            assert client.balance_base == BALANCE_BASE
            assert await client.balance() is None
    assert str(seen[0].url) == "https://api.runcomfy.net/prod/v2/balance"
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert caplog.records
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [{"balance_usd": None}, {"balance_usd": "12"}, {"currency": "USD"}, {"balance_usd": True}],
)
async def test_an_answer_without_a_number_is_none(body: dict[str, object]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with _client(transport) as client:
        assert await client.balance() is None


@pytest.mark.anyio
async def test_the_base_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_SERVERLESS_API_BASE", "https://serverless.example/prod/v2/")
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"balance_usd": 7}))
    async with _client(transport) as client:
        assert client.balance_base == "https://serverless.example/prod/v2"
        assert await client.balance() == 7.0


def test_plain_http_to_another_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_SERVERLESS_API_BASE", "http://serverless.example/prod/v2")
    with pytest.raises(TransportError, match="RUNCOMFY_SERVERLESS_API_BASE: plain http would"):
        ModelApiClient("https://model-api.runcomfy.net/v1", TOKEN)
