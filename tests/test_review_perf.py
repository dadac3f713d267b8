"""Hostile review of issue 12's performance changes: the aiohttp transport, the appended
manifest and the sync's skip of unchanged batches. Each test failed before its fix."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import aiohttp
import httpx
import pytest

from orchestrator.client import ModelApiClient
from orchestrator.errors import DownloadError
from orchestrator.retry import RetryPolicy
from orchestrator.transport import _Body

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


async def _cut_redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A redirect's head, its signed Location included, then a hang-up mid-answer."""
    writer.write(
        b"HTTP/1.1 302 Found\r\nLocation: https://cdn.example/o.png?Signature=SECRET\r\n"
        b"x-amz-security-token: TOKSECRET\r\n"
    )
    await writer.drain()


@pytest.mark.anyio
async def test_an_answer_cut_in_its_head_leaks_no_header_into_the_message(tmp_path: Path) -> None:
    """aiohttp's ServerDisconnectedError carries the head read so far (its repr: every header,
    a redirect's signed Location among them); the job's error and run.log showed it."""
    async with wire(_cut_redirect) as (server, base):
        retry = RetryPolicy(attempts=2, wait=False)
        async with ModelApiClient(base, TOKEN, retry=retry, http_transport="aiohttp") as client:
            url = base.removesuffix("/v1") + "/file/o.png?Signature=REQSECRET"
            with pytest.raises(DownloadError) as info:
                await client.download(url, tmp_path / "o.png")
    said = str(info.value)
    assert "ServerDisconnectedError: the server closed the connection" in said
    assert "SECRET" not in said
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_a_body_reaches_httpx_in_pieces_of_at_most_64_kib() -> None:
    """httpx's decoder expands each piece whole: the transport handed it all aiohttp had buffered
    (a slow reader: 128 KiB and more), so a gzip bomb's piece grew to hundreds of MiB at once.
    Here aiohttp's reader holds 4 MiB already when httpx asks for the body."""
    body = b"\0" * (4 * 1024 * 1024)
    reader = aiohttp.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    reader.feed_data(body)
    reader.feed_eof()
    stream = _Body(mock.Mock(content=reader), httpx.Request("GET", "http://127.0.0.1/big"))
    sizes = [len(chunk) async for chunk in stream]
    assert sum(sizes) == len(body)
    assert max(sizes) <= 64 * 1024
