"""The aiohttp-backed transport: what aiohttp raises reaches the client as "sent" or "not sent"
correctly, it never sends a request twice, and it streams.

Real sockets on 127.0.0.1 (test_client_wire's scripted server): aiohttp chooses the exception.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey
from click.testing import CliRunner
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from orchestrator.cli import cli
from orchestrator.client import NOT_SENT, ModelApiClient
from orchestrator.emulator import Emulator, EmulatorConfig
from orchestrator.errors import DownloadError, OutcomeUnknown, TransportError
from orchestrator.retry import RetryPolicy
from orchestrator.sweep import run_sweep
from orchestrator.transport import AiohttpTransport, translate

from .sweeps import write_spec
from .test_client_wire import MODEL, TOKEN, closed_port, hang_up, reply, stall, trickle, wire

KEY = ConnectionKey("api.example", 443, True, True, None, None, None)
REQUEST = httpx.Request("POST", "https://api.example/v1/models/m")


def api(base: str, *, timeout: float = 60.0, attempts: int = 3) -> ModelApiClient:
    retry = RetryPolicy(attempts=attempts, wait=False)
    return ModelApiClient(base, TOKEN, timeout=timeout, retry=retry, http_transport="aiohttp")


# -- the mapping: only a failure before a connection was had says "not sent" -------------------


@pytest.mark.parametrize(
    ("raised", "mapped", "sent"),
    [
        (aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused")), "Connect", 0),
        (aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "no such name")), "ConnectError", 0),
        (aiohttp.ConnectionTimeoutError("pool or connect"), "ConnectTimeout", 0),
        (aiohttp.SocketTimeoutError("sock_read"), "ReadTimeout", 1),
        (aiohttp.ServerDisconnectedError(), "RemoteProtocolError", 1),
        (aiohttp.ClientPayloadError("cut short"), "RemoteProtocolError", 1),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "ReadError", 1),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), "WriteError", 1),
        (aiohttp.ClientConnectionError("Connection lost"), "ReadError", 1),
        (ConnectionResetError(104, "reset"), "ReadError", 1),
        (TimeoutError(), "ReadTimeout", 1),
        (aiohttp.ClientError("anything else"), "ReadError", 1),
    ],
)
def test_only_failures_before_a_connection_say_not_sent(
    raised: BaseException, mapped: str, sent: int
) -> None:
    error = translate(raised, REQUEST)
    assert type(error).__name__.startswith(mapped)
    assert isinstance(error, NOT_SENT) is (not sent)
    assert type(raised).__name__ in str(error)


SIGNED = "https://cdn.example/out.mp4?Signature=SECRET"


@pytest.mark.parametrize(
    "raised",
    [
        aiohttp.ConnectionTimeoutError(f"Connection timeout to host {SIGNED}"),
        aiohttp.ClientResponseError(
            aiohttp.RequestInfo(URL(SIGNED), "GET", CIMultiDictProxy(CIMultiDict()), URL(SIGNED)),
            (),
            status=400,
            message="Invalid header token:\n\n  b'x'\n       ^",
        ),
        aiohttp.InvalidUrlClientError(SIGNED),
    ],
)
def test_no_url_and_no_parser_400_in_the_message(raised: BaseException) -> None:
    """A signed download URL holds credentials in its query; aiohttp's parser says 400."""
    message = str(translate(raised, REQUEST))
    assert "SECRET" not in message
    assert "400" not in message
    assert "\n" not in message


# -- the client over it, on real sockets --------------------------------------------------------


@pytest.mark.anyio
async def test_a_server_hanging_up_after_the_submit_is_an_unknown_outcome_sent_once() -> None:
    async with wire(hang_up) as (server, base), api(base) as client:
        with pytest.raises(OutcomeUnknown, match="RemoteProtocolError") as info:
            await client.submit(MODEL, {"56_text": "x"})
    assert "ServerDisconnectedError" in str(info.value)
    assert len(server.requests) == 1
    assert b'"56_text":"x"' in server.requests[0]


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the whole request, then reset the connection (RST, not FIN)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.anyio
async def test_a_connection_reset_after_the_submit_is_an_unknown_outcome() -> None:
    async with wire(reset) as (server, base), api(base) as client:
        with pytest.raises(OutcomeUnknown, match="was sent but its answer was lost"):
            await client.submit(MODEL, {"56_text": "x"})
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_a_refused_connection_is_retried_and_nothing_was_sent() -> None:
    with closed_port() as port:
        async with api(f"http://127.0.0.1:{port}/v1") as client:
            with pytest.raises(TransportError, match="nothing was sent") as info:
                await client.submit(MODEL, {"56_text": "x"})
    assert not isinstance(info.value, OutcomeUnknown)
    assert "ClientConnectorError" in str(info.value)
    assert "3 attempts" in str(info.value)


@pytest.mark.anyio
async def test_a_stalled_answer_is_a_read_timeout_and_an_unknown_outcome() -> None:
    async with wire(stall) as (server, base), api(base, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknown, match="ReadTimeout"):
            await client.submit(MODEL, {"56_text": "x"})
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_a_trickled_submit_ends_at_its_total_deadline_unknown_and_sent_once() -> None:
    async with wire(trickle) as (server, base), api(base, timeout=0.2) as client:
        with pytest.raises(OutcomeUnknown, match="DeadlineExceeded"):
            await client.submit(MODEL, {"56_text": "x"})
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_waiting_for_a_free_connection_times_out_as_not_sent() -> None:
    """Past the pool timeout the request never had a connection: retrying it is safe. (aiohttp
    bounds the wait for a connection and the connect together: pool + connect.)"""
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(30.0, pool=0.2, connect=0.2)
    async with (
        wire(stall) as (server, base),
        httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=timeout) as http,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(http.get, base + "/first")  # holds the only connection
        with anyio.fail_after(60):
            await server.arrived.wait()
        with pytest.raises(httpx.ConnectTimeout) as info:
            await http.get(base + "/second")
        assert isinstance(info.value, NOT_SENT)
        tasks.cancel_scope.cancel()
    assert len(server.requests) == 1


@asynccontextmanager
async def keep_alive_then_hang_up() -> AsyncIterator[tuple[list[bytes], str]]:
    """Answers a connection's first request and keeps it open; reads its second, then closes
    without answering: the race every client meets on a reused keep-alive connection."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield heads, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
@pytest.mark.parametrize("resend_on", [False, True], ids=["as-built", "guard-alone"])
async def test_a_get_on_a_dropped_keep_alive_connection_is_not_resent(resend_on: bool) -> None:
    """aiohttp alone resends a GET once here; through the transport it arrives once, and the
    failure reaches the client (whose retry policy decides). With aiohttp's resend switched back
    on, the transport's guard alone still refuses the second attempt."""
    transport = AiohttpTransport()
    if resend_on:
        transport._open()._retry_connection = True
    async with (
        keep_alive_then_hang_up() as (heads, base),
        httpx.AsyncClient(transport=transport) as http,
    ):
        assert (await http.get(base + "/one")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="ServerDisconnectedError"):
            await http.get(base + "/two")
    assert [h.split(b" ")[1] for h in heads] == [b"/one", b"/two"]


# -- bodies: streamed, undecoded until httpx decodes them ----------------------------------------


@pytest.mark.anyio
async def test_a_body_streams_before_it_has_all_arrived() -> None:
    """The server sends half, and the rest only once the client holds the first bytes: a
    transport that read whole bodies before answering would wait for ever."""
    half = b"x" * (4 * 1024 * 1024)
    got_some = asyncio.Event()

    async def halves(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {2 * len(half)}\r\n\r\n".encode())
        writer.write(half)
        await writer.drain()
        await got_some.wait()
        writer.write(half)
        await writer.drain()

    size = 0
    async with wire(halves) as (_, base), httpx.AsyncClient(transport=AiohttpTransport()) as http:
        with anyio.fail_after(60):
            async with http.stream("GET", base + "/big.mp4") as response:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    got_some.set()
    assert size == 2 * len(half)


@pytest.mark.anyio
async def test_a_big_download_streams_to_disk_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * (24 * 1024)  # 6 MiB
    dest = tmp_path / "out.part"
    async with wire(reply("200 OK", data)) as (_, base), api(base) as client:
        done = await client.download(base.removesuffix("/v1") + "/media/a.mp4", dest)
    assert dest.read_bytes() == data
    assert done.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_a_gzip_body_is_decoded_once_by_httpx(tmp_path: Path) -> None:
    data = b"frame " * 10_000
    handler = reply("200 OK", gzip.compress(data), extra="content-encoding: gzip\r\n")
    dest = tmp_path / "out.part"
    async with wire(handler) as (_, base), api(base) as client:
        done = await client.download(base.removesuffix("/v1") + "/media/a.bin", dest)
    assert dest.read_bytes() == data
    assert done.size == len(data)


@pytest.mark.anyio
async def test_a_truncated_download_is_retried_then_removed(tmp_path: Path) -> None:
    dest = tmp_path / "out.part"
    async with wire(reply("200 OK", b"x" * 500, length=1000)) as (server, base), api(base) as c:
        with pytest.raises(DownloadError, match="RemoteProtocolError"):
            await c.download(base.removesuffix("/v1") + "/media/a.mp4", dest)
    assert len(server.requests) == 3
    assert not dest.exists()


# -- choosing it ---------------------------------------------------------------------------------


def test_the_environment_chooses_the_transport_of_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str] = []
    real = AiohttpTransport.handle_async_request

    async def counted(self: AiohttpTransport, request: httpx.Request) -> httpx.Response:
        used.append(f"{request.method} {request.url.path}")
        return await real(self, request)

    monkeypatch.setattr(AiohttpTransport, "handle_async_request", counted)
    monkeypatch.setenv("COMFYSWEEP_HTTP_TRANSPORT", "aiohttp")
    spec = write_spec(tmp_path)
    with Emulator(EmulatorConfig(speed=1000.0)) as emu:
        report = run_sweep(spec, base_url=emu.base_url, token=emu.token)
    assert report.counts["done"] == 4
    assert sum(line.startswith("POST /v1/models/") for line in used) == 4


def test_an_unknown_transport_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path)
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "t")
    flag = CliRunner().invoke(cli, ["run", str(spec), "--http-transport", "curl"])
    assert flag.exit_code != 0
    assert "--http-transport" in flag.output
    assert "httpx" in flag.output
    monkeypatch.setenv("COMFYSWEEP_HTTP_TRANSPORT", "curl")
    env = CliRunner().invoke(cli, ["run", str(spec)])
    assert env.exit_code == 1
    assert (
        env.output.strip()
        .splitlines()[-1]
        .endswith("COMFYSWEEP_HTTP_TRANSPORT: expected one of httpx, aiohttp, got 'curl'")
    )
    assert "Traceback" not in env.output
