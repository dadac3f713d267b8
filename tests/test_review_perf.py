"""Hostile review of issue 12's performance changes: the aiohttp transport, the appended
manifest and the sync's skip of unchanged batches. Each test failed before its fix."""

from __future__ import annotations

import pytest

from orchestrator.client import ModelApiClient
from orchestrator.retry import RetryPolicy

from .test_client_wire import MODEL, TOKEN, closed_port, reply, wire

# -- the transport ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_proxy_from_the_environment_carries_the_default_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx applies HTTP(S)_PROXY only to its own transport: the aiohttp default ignored it, and
    a run behind a proxy could reach nothing (README says the proxy still applies)."""
    async with wire(reply("200 OK", b'{"request_id": "abc-123"}')) as (proxy, base):
        monkeypatch.setenv("HTTP_PROXY", base.removesuffix("/v1"))
        for var in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        retry = RetryPolicy(attempts=1, wait=False)
        with closed_port() as port:
            async with ModelApiClient(
                f"http://127.0.0.1:{port}/v1", TOKEN, retry=retry, http_transport="aiohttp"
            ) as client:
                submitted = await client.submit(MODEL, {"56_text": "x"})
    assert submitted.request_id == "abc-123"
    assert len(proxy.requests) == 1
    assert proxy.requests[0].startswith(f"POST http://127.0.0.1:{port}/v1/models/".encode())
