"""The client against real sockets on 127.0.0.1: proves what httpcore raises, and when.

MockTransport tests choose the exception; these let httpx/httpcore choose it, so the money
rule (retry a submit only when nothing was sent) is checked against the real stack.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import pytest

from orchestrator.client import ModelApiClient
from orchestrator.errors import DownloadError, OutcomeUnknown, TransportError
from orchestrator.retry import RetryPolicy

TOKEN = "wire-token-123"
MODEL = "community/wan-2-2/vace-fun"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Wire:
    """A raw TCP server whose connections follow a script; counts requests that arrived."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.arrived = asyncio.Event()  # set once a whole request has been read

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            self.requests.append(head + body)
            self.arrived.set()
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def wire(handler: Handler) -> AsyncIterator[tuple[Wire, str]]:
    state = Wire(handler)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


def reply(status: str, body: bytes, *, length: int | None = None, extra: str = "") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = len(body) if length is None else length
        head = f"HTTP/1.1 {status}\r\ncontent-length: {size}\r\n{extra}connection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    return handler


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the whole request, then close without a word (a job may have been created)."""


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Headers at once, then one body byte at a time until the client hangs up."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
    while True:
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b" ")


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Never answer; return once the client gives up and closes the connection."""
    await reader.read()


def api(base: str, *, timeout: float = 60.0, attempts: int = 3) -> ModelApiClient:
    retry = RetryPolicy(attempts=attempts, wait=False)
    # httpx's own transport here; tests/test_transport.py runs the aiohttp one on these servers.
    return ModelApiClient(base, TOKEN, timeout=timeout, retry=retry, http_transport="httpx")


@contextmanager
def closed_port() -> Iterator[int]:
    """A port held bound but not listening: connections are refused, and no one else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@pytest.mark.anyio
async def test_connection_refused_is_retried_and_nothing_was_sent() -> None:
    with closed_port() as port:
        async with api(f"http://127.0.0.1:{port}/v1") as client:
            with pytest.raises(TransportError, match="nothing was sent") as info:
                await client.submit(MODEL, {"56_text": "x"})
    assert not isinstance(info.value, OutcomeUnknown)
    assert "3 attempts" in str(info.value)


@pytest.mark.anyio
async def test_server_hanging_up_after_the_request_is_an_unknown_outcome() -> None:
    async with wire(hang_up) as (server, base), api(base) as client:
        with pytest.raises(OutcomeUnknown, match="RemoteProtocolError"):
            await client.submit(MODEL, {"56_text": "x"})
    assert len(server.requests) == 1
    assert b'"56_text":"x"' in server.requests[0]


@pytest.mark.anyio
async def test_read_timeout_after_the_request_is_an_unknown_outcome() -> None:
    async with wire(stall) as (server, base), api(base, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknown, match="ReadTimeout"):
            await client.submit(MODEL, {"56_text": "x"})
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_submit_over_a_real_socket() -> None:
    body = b'{"request_id": "abc"}'
    async with wire(reply("200 OK", body)) as (server, base), api(base) as client:
        submitted = await client.submit(MODEL, {"56_text": "x"})
    assert submitted.request_id == "abc"
    request = server.requests[0]
    assert request.startswith(b"POST /v1/models/community/wan-2-2/vace-fun HTTP/1.1\r\n")
    assert f"authorization: bearer {TOKEN}".encode() in request.lower()


@pytest.mark.anyio
async def test_reads_retry_a_dropped_connection() -> None:
    calls = 0

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            return
        await reply("200 OK", b'{"status": "in_progress"}')(reader, writer)

    async with wire(flaky) as (server, base), api(base) as client:
        status = await client.status("r1")
    assert status.state == "running"
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_truncated_download_is_retried_then_removed(tmp_path: Path) -> None:
    handler = reply("200 OK", b"x" * 500, length=1000)
    dest = tmp_path / "out.part"
    async with wire(handler) as (server, base), api(base) as client:
        with pytest.raises(DownloadError, match="RemoteProtocolError"):
            await client.download(base.removesuffix("/v1") + "/media/a.mp4", dest)
    assert len(server.requests) == 3
    assert not dest.exists()
    assert all(b"authorization" not in r.lower() for r in server.requests)


@pytest.mark.anyio
async def test_gzip_download_is_counted_on_the_wire_and_stored_decoded(tmp_path: Path) -> None:
    data = b"frame " * 10_000
    packed = gzip.compress(data)
    handler = reply("200 OK", packed, extra="content-encoding: gzip\r\n")
    dest = tmp_path / "out.part"
    async with wire(handler) as (_, base), api(base) as client:
        done = await client.download(base.removesuffix("/v1") + "/media/a.bin", dest)
    assert dest.read_bytes() == data
    assert done.size == len(data)
    assert done.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_real_download_streams_to_disk(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096
    dest = tmp_path / "out.part"
    async with wire(reply("200 OK", data)) as (_, base), api(base) as client:
        done = await client.download(base.removesuffix("/v1") + "/media/a.mp4", dest)
    assert dest.read_bytes() == data
    assert done.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.anyio
async def test_a_cancelled_submit_is_not_retried() -> None:
    async with wire(stall) as (server, base):
        async with api(base) as client, anyio.create_task_group() as tasks:
            tasks.start_soon(client.submit, MODEL, {"56_text": "x"})
            with anyio.fail_after(60):
                await server.arrived.wait()  # the request is on the server: now cancel it
            tasks.cancel_scope.cancel()
        # The client is closed: a resend would have had to happen by now.
        assert len(server.requests) == 1


# -- a total deadline: a trickling server never holds a call past it ----------------------------


@pytest.mark.anyio
async def test_a_trickled_submit_ends_at_its_deadline_as_an_unknown_outcome() -> None:
    async with wire(trickle) as (server, base), api(base, timeout=0.2) as client:
        with pytest.raises(OutcomeUnknown, match="DeadlineExceeded") as info:
            await client.submit(MODEL, {"56_text": "x"})
    assert "total deadline" in str(info.value)
    assert len(server.requests) == 1  # never resent


@pytest.mark.anyio
async def test_a_trickled_read_ends_at_its_deadline_after_its_retries() -> None:
    async with wire(trickle) as (server, base), api(base, timeout=0.2) as client:
        with pytest.raises(TransportError, match="DeadlineExceeded"):
            await client.status("r1")
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_a_trickled_download_ends_at_its_deadline_and_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.part"
    async with wire(trickle) as (server, base), api(base, timeout=0.2, attempts=2) as client:
        with pytest.raises(DownloadError, match="DeadlineExceeded"):
            await client.download(base.removesuffix("/v1") + "/media/a.mp4", dest)
    assert len(server.requests) == 2
    assert not dest.exists()
