"""The HTTP client of RunComfy's Model API: submit, status, result, cancel, catalog, download.

Liberal in what it reads and strict about money: a submit is retried only when the request
provably never reached the server. Parsing and bounds live in ``responses.py``, the error mapping
in ``apierrors.py``, the token-less downloader in ``download.py``; this module does the HTTP.
Every exchange has a total deadline, and nothing it raises or logs holds the token or a line
break. The protocol: shared/reference/runcomfy-model-api.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from orchestrator.apierrors import TOKEN_VARS, ErrorAnswer, api_error
from orchestrator.download import Downloaded, Downloader, _loopback
from orchestrator.errors import (
    ApiError,
    AuthError,
    ComfysweepError,
    OutcomeUnknown,
    RequestNotFound,
    ServerError,
    TransportError,
)
from orchestrator.pacing import Pacer
from orchestrator.responses import (
    BASE_VAR,
    DEFAULT_BASE,
    DEFAULT_HTTP_TRANSPORT,
    DEFAULT_TIMEOUT,
    HTTP_TRANSPORTS,
    MAX_REQUEST_ID,
    MAX_URLS,
    CancelOutcome,
    HttpTransport,
    ModelInfo,
    RemoteState,
    Result,
    Status,
    Submitted,
    clean_body,
    code_class,
    collect_urls,
    error_code,
    error_message,
    has_outcome,
    has_status,
    parse_cancel,
    parse_json_object,
    parse_model,
    parse_result,
    parse_status,
    scrub,
    text,
    unusable_id,
    valid_request_id,
)
from orchestrator.retry import (
    DeadlineExceeded,
    RetryPolicy,
    describe,
    parse_retry_after,
    total_deadline,
)

__all__ = [
    "DEFAULT_HTTP_TRANSPORT",
    "DEFAULT_TIMEOUT",
    "HTTP_TRANSPORTS",
    "MAX_ANSWER_BYTES",
    "MAX_REQUEST_ID",
    "MAX_URLS",
    "TRANSPORT_VAR",
    "CancelOutcome",
    "Downloaded",
    "HttpTransport",
    "ModelApiClient",
    "ModelInfo",
    "RemoteState",
    "Result",
    "RetryPolicy",
    "Status",
    "Submitted",
    "collect_urls",
    "env_http_transport",
    "env_token",
    "error_message",
]

log = logging.getLogger("comfysweep.client")

# The account balance lives on RunComfy's serverless API (as RunComfy's own CLI reads it).
BALANCE_BASE = "https://api.runcomfy.net/prod/v2"
BALANCE_VAR = "RUNCOMFY_SERVERLESS_API_BASE"
MAX_TOKEN = 4096  # RunComfy's are a few dozen characters; a longer header is refused anyway
# An API answer is a small JSON document: a bigger one is read no further (a hostile or broken
# server, or a compressed bomb, cannot make the runner hold gigabytes).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
TRANSPORT_VAR = "COMFYSWEEP_HTTP_TRANSPORT"  # beats the spec's run.http_transport, as the flag does
NO_TOKEN = (
    "no API token: set RUNCOMFY_API_TOKEN (or RUNCOMFY_TOKEN) to the token on your profile page "
    "at https://www.runcomfy.com, or use --emulator"
)

# Raised before a single byte of the request was written (httpcore: connect_tcp, start_tls and
# the wait for a pooled connection); everything else may have reached the server.
NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Also never sent, but retrying cannot help: a bad URL scheme or an unsendable header.
NEVER_SENDABLE: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


class _AnswerTooLarge(Exception):
    """An API answer past MAX_ANSWER_BYTES; becomes OutcomeUnknown (submit) or ServerError."""


def _read_retryable(exc: BaseException) -> bool:
    if isinstance(exc, NEVER_SENDABLE):
        return False
    return isinstance(exc, httpx.TransportError | ServerError)


def _submit_retryable(exc: BaseException) -> bool:
    if isinstance(exc, NOT_SENT):
        return True
    return isinstance(exc, ServerError) and exc.status_code == 429


class ModelApiClient:
    """Async client of the Model API; use as ``async with ModelApiClient() as api:``."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_download_bytes: int = 2 * 1024**3,
        max_connections: int = 8,
        pacer: Pacer | None = None,
        http_transport: str = DEFAULT_HTTP_TRANSPORT,
    ) -> None:
        self.pacer = pacer  # shared by every request, downloads too (pacing.py)
        self.requests_sent = 0  # every HTTP request, retries and downloads included
        self.base_url = _base_url(base_url if base_url is not None else os.environ.get(BASE_VAR))
        self._token = _token(token)
        self.balance_base = _balance_base(self.base_url)
        self.retry = retry or RetryPolicy()
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._deadline = total_deadline(timeout)
        # keep-alive below the common 5 s server idle timeout, so a reused connection is rarely
        # closed under a request (that race would turn a submit into an unknown outcome).
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=4.0,
        )
        api_transport, files_transport = _transports(http_transport, transport, limits)
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self._sending],
            "response": [self._answered],
        }
        self._api = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            timeout=self._timeout,
            limits=limits,
            transport=api_transport,
            follow_redirects=False,
            event_hooks=hooks,
        )
        # Downloads go through a client that never held the token; redirects are checked by hand.
        self._files = httpx.AsyncClient(
            timeout=self._timeout,
            limits=limits,
            transport=files_transport,
            follow_redirects=False,
            event_hooks=hooks,
        )
        self._downloader = Downloader(
            self._files,
            self.base_url,
            retry=self.retry,
            timeout=timeout,
            max_bytes=max_download_bytes,
            scrub=self._scrub,
            pace=self._pace,
        )

    def __repr__(self) -> str:
        return f"ModelApiClient(base_url={self.base_url!r})"

    @property
    def max_download_bytes(self) -> int:
        """The size cap of one downloaded output."""
        return self._downloader.max_bytes

    @staticmethod
    def check_token(token: str | None = None) -> None:
        """Raise AuthError (saying how to get one) unless a usable token is given or set."""
        _token(token)

    async def __aenter__(self) -> ModelApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close both connection pools."""
        await self._api.aclose()
        await self._files.aclose()

    # -- pacing: every request waits its turn; every answer is counted and learned from -----

    async def _pace(self) -> None:
        """Wait for the pacer (outside any request's deadline: a 429 pause is not a timeout)."""
        if self.pacer is not None:
            await self.pacer.wait()

    async def _sending(self, request: httpx.Request) -> None:
        self.requests_sent += 1

    async def _answered(self, response: httpx.Response) -> None:
        if self.pacer is not None:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            submit = response.request.method == "POST" and "/models/" in response.request.url.path
            self.pacer.answered(response.status_code, retry_after, submit=submit)

    def _url(self, *parts: str) -> str:
        return self.base_url + "/" + "/".join(parts)

    def _request_url(self, rid: str, action: str) -> str:
        checked = valid_request_id(rid)
        if checked is None:  # a store of an older version may hold one
            raise RequestNotFound(
                self._scrub(
                    f"{action} of a stored request id that is not usable "
                    f"({unusable_id(rid).removeprefix('with ')}): the API cannot be asked about it"
                )
            )
        return self._url("requests", quote(checked, safe=""), action)

    # -- submit: the paid call -------------------------------------------------------------

    async def submit(self, model_id: str, inputs: dict[str, Any]) -> Submitted:
        """POST a job: retried only when provably not sent; a lost answer raises OutcomeUnknown."""
        what = f"submit to {model_id}"
        url = self._url("models", quote(model_id, safe="/"))

        async def attempt() -> Submitted:
            try:
                response = await self._exchange("POST", url, json=inputs)
            except NOT_SENT:
                raise
            except _AnswerTooLarge as exc:
                raise self._unknown(what, str(exc)) from exc
            except NEVER_SENDABLE as exc:
                raise TransportError(f"{what}: cannot send ({describe(exc)})") from exc
            except httpx.HTTPError as exc:
                raise self._unknown(what, describe(exc)) from exc
            return self._submitted(response, what)

        with self._scrubbed():
            try:
                return await self.retry.retrying(_submit_retryable, what, self._scrub)(attempt)
            except NOT_SENT as exc:
                raise TransportError(
                    f"{what}: could not reach {self.base_url} ({describe(exc)}) after "
                    f"{self.retry.attempts} attempts; nothing was sent"
                ) from exc

    async def _exchange(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One API call within its total deadline, its answer read whole up to MAX_ANSWER_BYTES."""
        request = self._api.build_request(method, url, timeout=self._timeout, **kwargs)
        await self._pace()
        try:
            with anyio.fail_after(self._deadline):
                response = await self._api.send(request, stream=True)
                body = bytearray()
                try:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise _AnswerTooLarge(
                                f"HTTP {response.status_code} answer larger than "
                                f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB, not read further"
                            )
                finally:
                    await response.aclose()
        except TimeoutError:
            raise DeadlineExceeded(
                f"no complete answer within {self._deadline:g}s (the total deadline)",
                request=request,
            ) from None
        # The body is decoded already: the new response must not decode it again.
        skip = {b"content-encoding", b"content-length", b"transfer-encoding"}
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in skip]
        return httpx.Response(
            response.status_code, headers=headers, content=bytes(body), request=request
        )

    def _unknown(self, what: str, why: str) -> OutcomeUnknown:
        return OutcomeUnknown(
            self._scrub(
                f"{what}: the request was sent but its answer was lost ({why}); the job may exist "
                "and be billed, so it is not resubmitted automatically"
            )
        )

    def _submitted(self, response: httpx.Response, what: str) -> Submitted:
        body = self._body(response, what)
        status = response.status_code
        if response.is_success:
            code = error_code(body)
            if code is None:
                return self._accepted(body, what, status)
            status = code_class(code)
        error = self._api_error(response, body, what, status=status, submit=True)
        if status == 429:
            raise error  # a refusal: retried, and never created
        if status >= 500 or status == 408 or 300 <= status < 400:
            # A 303 after a POST may mean "created, look there"; a 5xx may come after the create.
            raise self._unknown(what, f"HTTP {response.status_code}: {error.message}") from error
        raise error

    def _accepted(self, body: dict[str, Any] | None, what: str, status: int) -> Submitted:
        """A 2xx to a submit: a job exists (and is billed) even when its request id is unusable."""
        raw = body.get("request_id") if body else None
        rid = valid_request_id(raw)
        if body is None or rid is None:
            raise self._unknown(what, f"HTTP {status} {unusable_id(raw)}")
        return Submitted(
            request_id=rid,
            status_url=self._request_url(rid, "status"),
            result_url=self._request_url(rid, "result"),
            cancel_url=self._request_url(rid, "cancel"),
        )

    # -- reads: retried freely -------------------------------------------------------------

    async def status(self, request_id: str) -> Status:
        """The job's current state (``COMPLETED`` means: ask ``result``)."""
        with self._scrubbed():
            url = self._request_url(request_id, "status")
            body = await self._read("GET", url, f"status of {request_id}", usable=has_status)
            return parse_status(request_id, body)

    async def result(self, request_id: str, include_cost: bool = True) -> Result:
        """The job's outcome: output URLs (any shape, at most MAX_URLS), or the error verbatim."""
        params = {"include_cost": "true"} if include_cost else None
        what = f"result of {request_id}"
        with self._scrubbed():
            url = self._request_url(request_id, "result")
            body = await self._read("GET", url, what, params=params, usable=has_outcome)
            return parse_result(request_id, body, self._token)

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Ask to cancel a queued job (retried: a second cancel costs nothing)."""
        with self._scrubbed():
            url = self._request_url(request_id, "cancel")
            return parse_cancel(await self._read("POST", url, f"cancel of {request_id}"))

    async def model(self, model_id: str) -> ModelInfo:
        """The catalog entry of ``model_id`` (404 or 400001 -> ModelNotFound)."""
        url = self._url("models", quote(model_id, safe="/"))
        with self._scrubbed():
            body = await self._read("GET", url, f"catalog entry of {model_id}", model=True)
            return parse_model(model_id, body)

    async def models(
        self, *, limit: int = 100, offset: int = 0, include_schema: bool = True
    ) -> dict[str, Any]:
        """One page of the catalog: ``{"models": [...], "total", "limit", "offset"}`` (retried
        as every read; an answer without a ``models`` list is unreadable)."""
        params = {"limit": str(limit), "offset": str(offset)}
        if include_schema:
            params["include_schema"] = "true"
        what = f"model catalog page at offset {offset}"
        with self._scrubbed():
            return await self._read(
                "GET",
                self._url("models"),
                what,
                params=params,
                usable=lambda body: isinstance(body.get("models"), list),
            )

    async def balance(self) -> float | None:
        """The account's balance in USD, or None when the API does not say (logged, never fatal).

        ``GET {RUNCOMFY_SERVERLESS_API_BASE}/balance`` answers ``{"balance_usd": 12.5, ...}``.
        """
        what = "account balance"
        try:
            with self._scrubbed():
                body = await self._read("GET", self.balance_base + "/balance", what)
        except ComfysweepError as exc:
            log.warning("%s (the run goes on without it)", exc)
            return None
        value = body.get("balance_usd")
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            log.warning("the %s is unknown: the answer holds no balance_usd", what)
            return None
        return float(value)

    async def _read(
        self,
        method: str,
        url: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        model: bool = False,
        usable: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """One read, retried on transport failures, 5xx/429/408 and answers it cannot use."""

        async def attempt() -> dict[str, Any]:
            try:
                response = await self._exchange(method, url, params=params)
            except _AnswerTooLarge as exc:
                raise ServerError(f"{what}: {exc}") from exc
            body = self._body(response, what)
            if not response.is_success:
                status = response.status_code
                raise self._api_error(response, body, what, status=status, model=model)
            code = error_code(body)
            # A failed job's result may carry a code of its own beside its status.
            if code is not None and text(body.get("status") if body else None) is None:
                raise self._api_error(response, body, what, status=code_class(code), model=model)
            if body is None or (usable is not None and not usable(body)):
                kind = response.headers.get("content-type", "no content type")[:100]
                raise ServerError(
                    self._scrub(f"{what}: unreadable answer (HTTP {response.status_code}, {kind})"),
                    status_code=response.status_code,
                )
            return body

        try:
            return await self.retry.retrying(_read_retryable, what, self._scrub)(attempt)
        except httpx.HTTPError as exc:
            raise TransportError(
                f"{what}: {describe(exc)} (gave up after {self.retry.attempts} attempts)"
            ) from exc

    def _body(self, response: httpx.Response, what: str) -> dict[str, Any] | None:
        """The answer as a JSON object without the token; NaN and Infinity read as null, noted."""
        body, nonfinite = parse_json_object(response.content)
        if nonfinite:
            log.warning(
                "%s: the answer held %d non-finite number(s) (NaN or Infinity), read as null",
                self._scrub(what),
                nonfinite,
            )
        return clean_body(body, self._token)

    # -- errors ----------------------------------------------------------------------------

    def _api_error(
        self,
        response: httpx.Response,
        body: dict[str, Any] | None,
        what: str,
        *,
        status: int,
        submit: bool = False,
        model: bool = False,
    ) -> ApiError:
        """Map an error answer by its ``error_code`` first, then its HTTP class (apierrors.py)."""
        answer = ErrorAnswer(
            http_status=response.status_code,
            status=status,
            body=body,
            reason=response.reason_phrase,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            submit=submit,
            model=model,
        )
        return api_error(answer, what, self._scrub)

    def _scrub(self, message: str) -> str:
        """Never let the token (or a line break) into a message, whatever the server sent."""
        return scrub(message, self._token)

    @contextlib.contextmanager
    def _scrubbed(self) -> Iterator[None]:
        """Scrub every failure leaving the client, and its causes: the CLI prints the chain."""
        try:
            yield
        except Exception as exc:
            _scrub_chain(exc, self._scrub)
            raise

    # -- downloads -------------------------------------------------------------------------

    async def download(self, url: str, dest: Path) -> Downloaded:
        """Stream ``url`` to ``dest`` without the token; the partial file is removed on failure."""
        with self._scrubbed():
            return await self._downloader.download(url, dest)


def _transports(
    name: str, given: httpx.AsyncBaseTransport | None, limits: httpx.Limits
) -> tuple[httpx.AsyncBaseTransport | None, httpx.AsyncBaseTransport | None]:
    """The API's and the downloads' transports: ``given`` for both, else one pool each of the
    transport named (None: httpx's own, built by each client from ``limits``)."""
    if name not in HTTP_TRANSPORTS:
        raise ValueError(f"http_transport: expected one of {HTTP_TRANSPORTS}, got {name!r}")
    if given is not None or name == "httpx":
        return given, given
    if _environment_proxy():
        # httpx applies a proxy from the environment only to its own transport.
        log.debug("a proxy is set in the environment: httpx's own transport carries the run")
        return None, None
    from orchestrator.transport import AiohttpTransport  # imported by the runs that use it only

    return AiohttpTransport(limits=limits), AiohttpTransport(limits=limits)


def _environment_proxy() -> bool:
    """Whether HTTP(S)_PROXY or ALL_PROXY is set (as httpx reads them, through urllib)."""
    import urllib.request

    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())


def _scrub_chain(exc: BaseException, clean: Callable[[str], str]) -> None:
    """Rewrite the text of ``exc`` and of the exceptions behind it, in place."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        if isinstance(current, ComfysweepError):
            current.message = clean(current.message)
        current.args = tuple(clean(a) if isinstance(a, str) else a for a in current.args)
        current = current.__cause__ or current.__context__


_HOST = re.compile(r"[A-Za-z0-9._:-]+")  # a name or an IP address (IPv6 without its brackets)


def _base_url(
    value: str | None, var: str = BASE_VAR, default: str = DEFAULT_BASE, path: str = "/v1"
) -> str:
    """The API base, ending in /v1 and no slash; a bare origin gets /v1 added."""
    raw = (value or "").strip() or default
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise TransportError(f"{var}: not a valid URL: {raw!r}") from exc
    if url.userinfo:  # never echoed: it holds a password
        raise TransportError(f"{var}: must not hold a user name or password")
    if url.scheme not in ("http", "https") or not _HOST.fullmatch(url.host):
        raise TransportError(f"{var}: expected an http(s) URL such as {default}, got {raw!r}")
    if url.scheme == "http" and not _loopback(url.host):
        raise TransportError(
            f"{var}: plain http would send the API token in the clear; use https "
            f"(plain http only for an emulator on this machine), got {raw!r}"
        )
    given = url.path.rstrip("/")
    return str(url.copy_with(path=given or path, query=None, fragment=None)).rstrip("/")


def _balance_base(api_base: str) -> str:
    """The serverless API base: RUNCOMFY_SERVERLESS_API_BASE, else the emulator's own (a Model
    API on this machine serves ``/prod/v2/balance`` too), else RunComfy's."""
    value = os.environ.get(BALANCE_VAR, "").strip()
    if not value:
        api = httpx.URL(api_base)
        value = str(api.copy_with(path="/prod/v2")) if _loopback(api.host) else BALANCE_BASE
    return _base_url(value, BALANCE_VAR, BALANCE_BASE, "/prod/v2")


def env_token() -> tuple[str, str] | None:
    """The token in the environment (RUNCOMFY_API_TOKEN, then RUNCOMFY_TOKEN) and its variable."""
    for name in TOKEN_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    return None


def env_http_transport() -> str | None:
    """The transport COMFYSWEEP_HTTP_TRANSPORT names, if set (checked: one line when unknown)."""
    value = os.environ.get(TRANSPORT_VAR, "").strip()
    if value and value not in HTTP_TRANSPORTS:
        raise TransportError(
            f"{TRANSPORT_VAR}: expected one of {', '.join(HTTP_TRANSPORTS)}, got {value[:100]!r}"
        )
    return value or None


def _token(value: str | None) -> str:
    """The token: the argument, then RUNCOMFY_API_TOKEN, then RUNCOMFY_TOKEN."""
    source = "the token argument"
    if value is None and (found := env_token()) is not None:
        value, source = found
    token = (value or "").strip()
    if not token:
        raise AuthError(NO_TOKEN)
    # An HTTP header is ASCII: anything else would fail deep inside httpx, on every request.
    if not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        raise AuthError(
            f"the API token in {source} contains spaces, control or non-ASCII characters"
        )
    if len(token) > MAX_TOKEN:
        raise AuthError(
            f"the API token in {source} is {len(token)} characters; at most {MAX_TOKEN}"
        )
    return token
