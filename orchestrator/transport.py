"""An aiohttp-backed transport behind httpx's API: ``httpx.AsyncClient`` stays the client (its
requests, responses, hooks and errors), aiohttp only moves the bytes.

The money rule lives in the error mapping. The client retries a submit only on an error that
proves nothing was sent (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``), so only a failure
before a connection was had maps to one of those; anything after a connection was handed over
(a reset while writing, a server that hung up, a truncated answer, a read timeout) maps to an
error the client reads as "may have been sent" (``WriteError``, ``ReadError``,
``RemoteProtocolError``, ``ReadTimeout``). The ready-made ``httpx-aiohttp`` maps some of those to
``ConnectTimeout``: a lost answer would become a resubmit, and a double charge.

aiohttp resends an idempotent request once, by itself, when a reused keep-alive connection fails
under it; that is turned off (and a guard refuses any second attempt): this transport sends each
request at most once, and retrying is the client's decision alone.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from aiohttp.client_middlewares import ClientHandlerType
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

__all__ = ["AiohttpTransport", "translate"]

# aiohttp adds none of its own headers: what httpx built is what is sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


# The most of an answer's body handed to httpx at once (its decoder expands each piece whole).
_CHUNK = 64 * 1024

# The server hung up before answering, cut the answer short, or sent something that is not HTTP.
_PROTOCOL_ERRORS = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)


def translate(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx error for an aiohttp failure; only a failure before a connection was had may
    say "not sent" (ConnectError, ConnectTimeout): the client resubmits on those."""
    message = _said(exc)
    # Before a connection: waiting for a free one, resolving, connecting, the TLS handshake.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message, request=request)
    # After: any byte of the request may have reached the server.
    if isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError (sock_read) among them
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return httpx.WriteError(message, request=request)
    if isinstance(exc, _PROTOCOL_ERRORS):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


def _said(exc: BaseException) -> str:
    """One line naming the failure; never a URL (a signed download URL holds credentials in its
    query), nor aiohttp's parser code 400, which would read as the server's HTTP status."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        said = "no connection within the connect timeout (waiting for a free one, or connecting)"
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        said = "not a URL that can be sent to"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        # Its message may be the answer's head read so far: a Location holding a signed URL.
        said = "the server closed the connection before its answer was complete"
    elif isinstance(exc, aiohttp.ClientResponseError):
        said = f"an answer that is not valid HTTP: {exc.message}"
    elif isinstance(exc, aiohttp.ClientPayloadError) and isinstance(
        exc.__cause__, HttpProcessingError
    ):
        said = f"the answer's body was cut short: {exc.__cause__.message}"
    else:
        said = str(exc)
    said = " ".join(word for word in said.split() if word != "^")  # aiohttp's caret line
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


@contextmanager
def _translated(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise translate(exc, request) from exc


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's trust store (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once (~20 ms)."""
    return httpx.create_ssl_context()


class _Once:
    """A middleware that lets a request through once: aiohttp's own resend of an idempotent
    request on a failed keep-alive connection meets the first attempt's failure instead."""

    __slots__ = ("failure", "tried")

    def __init__(self) -> None:
        self.tried = False
        self.failure: BaseException | None = None

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if self.tried:
            raise self.failure or aiohttp.ServerDisconnectedError("a second attempt refused")
        self.tried = True
        try:
            return await handler(request)
        except BaseException as exc:
            self.failure = exc
            raise


class _Body(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx reads it: streamed, chunk by chunk, undecoded."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated(self._request):
            # At most _CHUNK at a time, as httpcore reads: what httpx's decoder expands in one
            # go stays bounded (all that aiohttp had buffered, hundreds of MiB of a gzip bomb).
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        # A body read to its end frees the connection for reuse; one cut short closes it.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=AiohttpTransport(limits=...))``: HTTP/1.1 over aiohttp.

    Connection limits and keep-alive come from ``httpx.Limits``; each request's timeouts from the
    ``httpx.Timeout`` httpx puts in its extensions: read; connect; and pool, which aiohttp bounds
    together with the connect (their sum). aiohttp has no write timeout: a stuck write ends at the
    client's total deadline. No cookie jar, no proxies or
    netrc from the environment, no decompression (httpx decodes), no redirects (httpx's call).
    The aiohttp session opens at the first request, inside the running event loop.
    """

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        self._limits = limits or httpx.Limits()
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        limits = self._limits
        options: dict[str, Any] = {}
        if limits.keepalive_expiry is not None:
            options["keepalive_timeout"] = limits.keepalive_expiry
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,  # 0: no limit, as httpx's None
            ssl=_ssl_context(),
            **options,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        # aiohttp resends a GET once when a reused connection fails under it: never here.
        session._retry_connection = False
        self._session = session
        return session

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout") or {}
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            timeout = aiohttp.ClientTimeout(
                total=None,
                # aiohttp's connect covers the wait for a free connection and the connect itself.
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect,
                sock_read=read,
            )
            self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        content = await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        with _translated(request):
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),  # httpx quoted it already
                headers=headers,
                data=content or None,
                allow_redirects=False,
                timeout=self._timeout(request),
                middlewares=(_Once(),),
            )
        version = response.version
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions={
                "http_version": f"HTTP/{version.major}.{version.minor}".encode()
                if version
                else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
