"""The HTTP client of RunComfy's Model API: submit, status, result, cancel, catalog, download.

Liberal in what it reads (every state spelling, every output shape, ``error_code`` in a 200,
bodies it does not understand) and strict about money: a submit is retried only when the
request provably never reached the server. The protocol: shared/reference/runcomfy-model-api.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from orchestrator.errors import (
    ApiError,
    AuthError,
    BalanceError,
    DownloadError,
    ModelNotFound,
    OutcomeUnknown,
    OutputExpired,
    RequestNotFound,
    ServerError,
    TransportError,
    ValidationFailed,
)
from orchestrator.retry import RetryPolicy, describe, parse_retry_after

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "CancelOutcome",
    "Downloaded",
    "ModelApiClient",
    "ModelInfo",
    "RemoteState",
    "Result",
    "RetryPolicy",
    "Status",
    "Submitted",
    "collect_urls",
    "error_message",
]

log = logging.getLogger("comfysweep.client")

DEFAULT_BASE = "https://model-api.runcomfy.net/v1"
BASE_VAR = "RUNCOMFY_MODEL_API_BASE"
TOKEN_VARS = ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN")
DOWNLOAD_DOMAINS = ("runcomfy.net", "runcomfy.com")
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 30.0  # seconds to wait for each answer; `comfysweep run --timeout` overrides it
# An API answer is a small JSON document: a bigger one is read no further (a hostile or broken
# server, or a compressed bomb, cannot make the runner hold gigabytes).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
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

AUTH_CODES = frozenset({400004, 401001})
BALANCE_CODES = frozenset({400002, 10003})
RETRY_STATUSES = frozenset({408, 429})
# The Model API answers "cancelled"; the serverless API "cancellation_requested".
CANCEL_ACCEPTED = frozenset({"cancelled", "canceled", "cancellation_requested"})


class RemoteState(StrEnum):
    """A job's state as the Model API reports it, with every known spelling folded in."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # status endpoint only: finished, ask /result how
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # a spelling we do not know: non-terminal

    @property
    def terminal(self) -> bool:
        """True when the job will not change any more (COMPLETED still needs /result)."""
        return self in (RemoteState.SUCCEEDED, RemoteState.FAILED, RemoteState.CANCELLED)


_SPELLINGS: dict[str, RemoteState] = {
    **dict.fromkeys(("in_queue", "queued", "pending", "waiting", "starting"), RemoteState.QUEUED),
    **dict.fromkeys(("in_progress", "running", "processing"), RemoteState.RUNNING),
    "completed": RemoteState.COMPLETED,
    "succeeded": RemoteState.SUCCEEDED,
    "failed": RemoteState.FAILED,
    "cancelled": RemoteState.CANCELLED,
    "canceled": RemoteState.CANCELLED,
}
_unknown_seen: set[str] = set()


def remote_state(spelling: str, *, result: bool = False) -> RemoteState:
    """Map a ``status`` string; on the result endpoint ``completed`` means success."""
    state = _SPELLINGS.get(spelling.strip().lower(), RemoteState.UNKNOWN)
    if state is RemoteState.UNKNOWN and spelling not in _unknown_seen:
        _unknown_seen.add(spelling)
        log.warning("unknown job state %r from the Model API: treated as not finished", spelling)
    if result and state is RemoteState.COMPLETED:
        return RemoteState.SUCCEEDED
    return state


@dataclass(frozen=True)
class Submitted:
    """A job the server accepted (and bills)."""

    request_id: str
    status_url: str
    result_url: str
    cancel_url: str


@dataclass(frozen=True)
class Status:
    """One answer of the status endpoint."""

    request_id: str
    state: RemoteState
    queue_position: int | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """One answer of the result endpoint: URLs on success, the error kept verbatim on failure."""

    request_id: str
    state: RemoteState
    urls: list[str]
    error: Any
    error_message: str | None
    cost: float | None
    created_at: str | None
    finished_at: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class CancelOutcome:
    """Whether a cancel took effect (a running job cannot be cancelled and stays billed)."""

    cancelled: bool
    raw: dict[str, Any]


@dataclass(frozen=True)
class ModelInfo:
    """The catalog entry of a model: its base price (the real charge is a result's ``cost``)."""

    model_id: str
    base_price_usd: float | None
    price_unit: str | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class Downloaded:
    """A file fully written, fsynced and hashed."""

    path: Path
    size: int
    sha256: str
    content_type: str | None


_URL_KEYS = ("video", "videos", "image", "images", "url", "path", "audio")


def collect_urls(output: Any) -> list[str]:
    """Every http(s) URL in an ``output`` of any shape, well-known keys first, deduplicated."""
    found: list[str] = []
    stack = [output]  # depth-first without recursion: a deeply nested body cannot crash us
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            text = value.strip()
            if text.lower().startswith(("http://", "https://")):
                found.append(text)
        elif isinstance(value, list | tuple):
            stack.extend(reversed(value))
        elif isinstance(value, dict):
            known = [value[key] for key in _URL_KEYS if key in value]
            rest = [item for key, item in value.items() if key not in _URL_KEYS]
            stack.extend(reversed(known + rest))
    return list(dict.fromkeys(found))


def error_message(error: Any, _depth: int = 0) -> str | None:
    """A readable message from an error of any shape: string, {type, message}, or a list."""
    if error is None or _depth > 8:
        return None
    if isinstance(error, str):
        return error.strip() or None
    if isinstance(error, list | tuple):
        parts = [m for m in (error_message(item, _depth + 1) for item in error) if m]
        return "; ".join(parts) or None
    if isinstance(error, dict):
        keys = ("message", "error_message", "msg", "detail", "error")
        said = (error_message(error.get(key), _depth + 1) for key in keys)
        text = next((m for m in said if m), None)
        kind = error.get("type") if isinstance(error.get("type"), str) else None
        if kind and text:
            return f"{kind}: {text}"
        return text or kind or json.dumps(error, default=str)[:300]
    return str(error)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None for anything else (HTML, text, a list, bad JSON)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _error_code(body: dict[str, Any] | None) -> int | None:
    """The body's ``error_code`` as an int; 0 and unreadable values count as none."""
    code = body.get("error_code") if body else None
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) and code else None


def _code_class(code: int) -> int:
    """The HTTP status a code stands for: 400004 -> 400; the serverless 1000x codes -> 400."""
    return code // 1000 if code >= 100000 else 400


def _fields(detail: Any) -> list[str]:
    """Input names a validation ``detail`` points at (FastAPI ``loc`` lists or ``field`` keys)."""
    names: list[str] = []
    for item in detail if isinstance(detail, list) else [detail]:
        if not isinstance(item, dict):
            continue
        loc = item.get("loc")
        if isinstance(loc, list | tuple):
            parts = [str(p) for p in loc if p not in ("body", "query", "path")]
            if parts:
                names.append(".".join(parts))
                continue
        for key in ("field", "name", "param", "input"):
            if isinstance(item.get(key), str):
                names.append(item[key])
                break
    return list(dict.fromkeys(names))


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _short(url: str | httpx.URL) -> str:
    """A URL without its query (signed CDN URLs carry credentials there)."""
    try:
        return str(httpx.URL(str(url)).copy_with(query=None, fragment=None))
    except httpx.InvalidURL:
        return repr(str(url)[:200])


class _AnswerTooLarge(Exception):
    """An API answer past MAX_ANSWER_BYTES; becomes OutcomeUnknown (submit) or ServerError."""


class _ShortBody(DownloadError):
    """The body ended before Content-Length: retried."""


def _read_retryable(exc: BaseException) -> bool:
    if isinstance(exc, NEVER_SENDABLE):
        return False
    return isinstance(exc, httpx.TransportError | ServerError | _ShortBody)


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
    ) -> None:
        self.base_url = _base_url(base_url if base_url is not None else os.environ.get(BASE_VAR))
        self._token = _token(token)
        self._base_host = (httpx.URL(self.base_url).host or "").lower()
        self.retry = retry or RetryPolicy()
        self.max_download_bytes = max_download_bytes
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        # keep-alive below the common 5 s server idle timeout, so a reused connection is rarely
        # closed under a request (that race would turn a submit into an unknown outcome).
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=4.0,
        )
        self._api = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
            timeout=self._timeout,
            limits=limits,
            transport=transport,
            follow_redirects=False,
        )
        # Downloads go through a client that never held the token; redirects are checked by hand.
        self._files = httpx.AsyncClient(
            timeout=self._timeout, limits=limits, transport=transport, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"ModelApiClient(base_url={self.base_url!r})"

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

    def _url(self, *parts: str) -> str:
        return self.base_url + "/" + "/".join(parts)

    def _request_url(self, request_id: str, action: str) -> str:
        return self._url("requests", quote(request_id, safe=""), action)

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
                raise TransportError(self._scrub(f"{what}: cannot send ({describe(exc)})")) from exc
            except httpx.HTTPError as exc:
                raise self._unknown(what, describe(exc)) from exc
            return self._submitted(response, what)

        try:
            return await self.retry.retrying(_submit_retryable, what)(attempt)
        except NOT_SENT as exc:
            raise TransportError(
                self._scrub(
                    f"{what}: could not reach {self.base_url} ({describe(exc)}) after "
                    f"{self.retry.attempts} attempts; nothing was sent"
                )
            ) from exc

    async def _exchange(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One API call, its answer read whole but never past MAX_ANSWER_BYTES (decoded)."""
        request = self._api.build_request(method, url, timeout=self._timeout, **kwargs)
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
        body = self._clean(_json_object(response))
        status = response.status_code
        if response.is_success:
            code = _error_code(body)
            if code is not None:
                status = _code_class(code)
            elif body is not None and _request_id(body.get("request_id")):
                rid = _request_id(body.get("request_id"))
                assert rid is not None
                return Submitted(
                    request_id=rid,
                    status_url=_str(body.get("status_url")) or self._request_url(rid, "status"),
                    result_url=_str(body.get("result_url")) or self._request_url(rid, "result"),
                    cancel_url=_str(body.get("cancel_url")) or self._request_url(rid, "cancel"),
                )
            else:
                raise self._unknown(what, f"HTTP {status} without a request id")
        error = self._api_error(response, body, what, status=status, submit=True)
        if status == 429:
            raise error  # a refusal: retried, and never created
        if status >= 500 or status == 408 or 300 <= status < 400:
            # A 303 after a POST may mean "created, look there"; a 5xx may come after the create.
            raise self._unknown(what, f"HTTP {response.status_code}: {error.message}") from error
        raise error

    # -- reads: retried freely -------------------------------------------------------------

    async def status(self, request_id: str) -> Status:
        """The job's current state (``COMPLETED`` means: ask ``result``)."""
        url = self._request_url(request_id, "status")
        body = await self._read("GET", url, f"status of {request_id}", usable=_has_status)
        return Status(
            request_id=request_id,
            state=remote_state(_str(body.get("status")) or ""),
            queue_position=_int(body.get("queue_position")),
            raw=body,
        )

    async def result(self, request_id: str, include_cost: bool = True) -> Result:
        """The job's outcome: output URLs (any shape), or the error kept verbatim."""
        params = {"include_cost": "true"} if include_cost else None
        url = self._request_url(request_id, "result")
        body = await self._read(
            "GET", url, f"result of {request_id}", params=params, usable=_has_outcome
        )
        spelling = _str(body.get("status"))
        if spelling is not None:
            state = remote_state(spelling, result=True)
        else:
            state = RemoteState.SUCCEEDED if body.get("output") is not None else RemoteState.FAILED
        error = body.get("error")
        message = error_message(error)
        if state is RemoteState.FAILED and message is None:
            message = (
                error_message(body.get("error_message")) or "the job failed (no message given)"
            )
        return Result(
            request_id=request_id,
            state=state,
            urls=collect_urls(body.get("output")),
            error=error,
            error_message=self._scrub(message) if message else None,
            cost=_float(body.get("cost")),
            created_at=_str(body.get("created_at")),
            finished_at=_str(body.get("finished_at")),
            raw=body,
        )

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Ask to cancel a queued job (retried: a second cancel costs nothing)."""
        body = await self._read(
            "POST", self._request_url(request_id, "cancel"), f"cancel of {request_id}"
        )
        outcome = (_str(body.get("outcome")) or "").lower()
        status = (_str(body.get("status")) or "").lower()
        done = outcome == "cancelled" or status in CANCEL_ACCEPTED
        return CancelOutcome(cancelled=done and outcome != "not_cancellable", raw=body)

    async def model(self, model_id: str) -> ModelInfo:
        """The catalog entry of ``model_id`` (404 or 400001 -> ModelNotFound)."""
        url = self._url("models", quote(model_id, safe="/"))
        body = await self._read("GET", url, f"catalog entry of {model_id}", model=True)
        return ModelInfo(
            model_id=_str(body.get("model_id")) or model_id,
            base_price_usd=_float(body.get("base_price_usd")),
            price_unit=_str(body.get("price_unit")),
            raw=body,
        )

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
            body = self._clean(_json_object(response))
            if response.is_success:
                code = _error_code(body)
                # A failed job's result may carry a code of its own beside its status.
                if code is not None and _str(body.get("status") if body else None) is None:
                    raise self._api_error(
                        response, body, what, status=_code_class(code), model=model
                    )
                if body is None or (usable is not None and not usable(body)):
                    kind = response.headers.get("content-type", "no content type")
                    raise ServerError(
                        f"{what}: unreadable answer (HTTP {response.status_code}, {kind})",
                        status_code=response.status_code,
                    )
                return body
            raise self._api_error(response, body, what, status=response.status_code, model=model)

        try:
            return await self.retry.retrying(_read_retryable, what)(attempt)
        except httpx.HTTPError as exc:
            raise TransportError(
                self._scrub(
                    f"{what}: {describe(exc)} (gave up after {self.retry.attempts} attempts)"
                )
            ) from exc

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
        """Map an error answer by its ``error_code`` first, then its HTTP class."""
        code = _error_code(body)
        detail = body.get("detail") if body else None
        said = None
        if body:
            said = next(
                (
                    m
                    for k in ("error_message", "message", "error", "detail")
                    if (m := error_message(body.get(k)))
                ),
                None,
            )
        said = (said or response.reason_phrase or "no readable message")[:500]
        where = f"HTTP {response.status_code}" + (f", error_code {code}" if code else "")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        kwargs: dict[str, Any] = {
            "status_code": response.status_code,
            "error_code": code,
            "detail": detail,
            "retry_after": retry_after,
        }

        def text(extra: str = "") -> str:
            return self._scrub(f"{what}: {said} ({where}){extra}")

        if code in AUTH_CODES or status == 401:
            return AuthError(text(f"; check {TOKEN_VARS[0]}"), **kwargs)
        if code in BALANCE_CODES or status == 402:
            return BalanceError(text("; top up your RunComfy balance"), **kwargs)
        if code == 400001 or (code is None and status == 404 and (submit or model)):
            return ModelNotFound(text(), **kwargs)
        if code == 422001 or status == 422:
            fields = _fields(detail)
            return ValidationFailed(
                text(f"; fields: {', '.join(fields)}" if fields else ""), **kwargs
            )
        if code == 404001 or (code is None and status == 404 and body is not None and not submit):
            return RequestNotFound(text(), **kwargs)
        if status >= 500 or status in RETRY_STATUSES:
            kwargs["status_code"] = status  # a 5xx-class code in a 200 is a server error too
            return ServerError(text(), **kwargs)
        return ApiError(text(), **kwargs)

    def _clean(self, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """A body with the token replaced wherever a server echoed it: bodies get stored."""
        if body is None or not self._token:
            return body
        escaped = json.dumps(self._token)[1:-1]
        try:
            text = json.dumps(body)
            if escaped not in text:
                return body
            clean = json.loads(text.replace(escaped, "***"))
        except (ValueError, RecursionError):
            return None  # a body we cannot check is a body we do not keep
        return clean if isinstance(clean, dict) else None

    def _scrub(self, text: str) -> str:
        """Never let the token into a message, whatever the server echoed."""
        return text.replace(self._token, "***") if self._token else text

    # -- downloads -------------------------------------------------------------------------

    def _allowed(self, url: httpx.URL) -> bool:
        host = (url.host or "").lower()
        if host == self._base_host:
            return url.scheme in ("http", "https")
        on_cdn = any(host == d or host.endswith("." + d) for d in DOWNLOAD_DOMAINS)
        return url.scheme == "https" and on_cdn

    async def download(self, url: str, dest: Path) -> Downloaded:
        """Stream ``url`` to ``dest`` without the token; the partial file is removed on failure."""
        what = f"download of {_short(url)}"
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise DownloadError(f"{what}: not a valid URL") from exc
        if not self._allowed(target):
            raise DownloadError(
                f"{what}: refusing to download from {target.host or 'no host'} over "
                f"{target.scheme or 'no scheme'} (only https *.runcomfy.net / *.runcomfy.com "
                "or the API's own host)"
            )
        try:
            return await self.retry.retrying(_read_retryable, what)(
                self._download_once, target, dest, what
            )
        except httpx.HTTPError as exc:
            raise DownloadError(
                f"{what}: {describe(exc)} (gave up after {self.retry.attempts} attempts)"
            ) from exc
        except ServerError as exc:
            raise DownloadError(
                f"{what}: {exc.message} (gave up after {self.retry.attempts} attempts)"
            ) from exc

    async def _download_once(self, url: httpx.URL, dest: Path, what: str) -> Downloaded:
        for _ in range(MAX_REDIRECTS + 1):
            request = self._files.build_request(
                "GET", url, headers={"Accept-Encoding": "identity"}, timeout=self._timeout
            )
            response = await self._files.send(request, stream=True)
            try:
                if response.next_request is not None:
                    url = response.next_request.url
                    if not self._allowed(url):
                        raise DownloadError(
                            f"{what}: refusing a redirect to {url.host} over {url.scheme}"
                        )
                    continue
                status = response.status_code
                if status in (403, 404, 410):
                    raise OutputExpired(
                        f"{what}: the output URL has expired (HTTP {status})", status=status
                    )
                if status >= 500 or status in RETRY_STATUSES:
                    raise ServerError(
                        f"{what}: HTTP {status}",
                        status_code=status,
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                    )
                if not response.is_success:
                    raise DownloadError(f"{what}: HTTP {status}", status=status)
                return await self._save(response, dest, what)
            finally:
                await response.aclose()
        raise DownloadError(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def _save(self, response: httpx.Response, dest: Path, what: str) -> Downloaded:
        length_header = response.headers.get("content-length", "")
        expected = int(length_header) if length_header.strip().isdigit() else None
        limit = self.max_download_bytes
        if expected is not None and expected > limit:
            raise DownloadError(f"{what}: {expected} bytes is over the {limit}-byte limit")
        digest = hashlib.sha256()
        size = 0
        # Plain writes: a 64 KiB write to the page cache takes microseconds, a thread hop per
        # chunk costs more; only the fsync (which can take long) goes to a worker thread.
        try:
            with open(dest, "wb") as out:  # noqa: ASYNC230
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise DownloadError(f"{what}: more than the {limit}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
                # Content-Length counts the bytes on the wire, before any content decoding.
                encoded = response.headers.get("content-encoding", "identity") != "identity"
                got = response.num_bytes_downloaded if encoded else size
                if expected is not None and got < expected:
                    raise _ShortBody(f"{what}: the body ended after {got} of {expected} bytes")
                out.flush()
                await anyio.to_thread.run_sync(os.fsync, out.fileno())
        except OSError as exc:
            _remove(dest)
            raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        except BaseException:
            _remove(dest)
            raise
        return Downloaded(dest, size, digest.hexdigest(), response.headers.get("content-type"))


def _remove(path: Path) -> None:
    """Delete a partial file if the file system lets us (a read-only one refuses even that)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _has_status(body: dict[str, Any]) -> bool:
    return _str(body.get("status")) is not None


def _has_outcome(body: dict[str, Any]) -> bool:
    return _has_status(body) or body.get("output") is not None or body.get("error") is not None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _request_id(value: Any) -> str | None:
    """A usable request id: a non-empty string (or an integer, sent as text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return (value.strip() or None) if isinstance(value, str) else None


def _base_url(value: str | None) -> str:
    """The API base, ending in /v1 and no slash; a bare origin gets /v1 added."""
    raw = (value or "").strip() or DEFAULT_BASE
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise TransportError(f"{BASE_VAR}: not a valid URL: {raw!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise TransportError(
            f"{BASE_VAR}: expected an http(s) URL such as {DEFAULT_BASE}, got {raw!r}"
        )
    path = url.path.rstrip("/")
    return str(url.copy_with(path=path or "/v1", query=None, fragment=None)).rstrip("/")


def _token(value: str | None) -> str:
    """The token: the argument, then RUNCOMFY_API_TOKEN, then RUNCOMFY_TOKEN."""
    source = "the token argument"
    if value is None:
        for name in TOKEN_VARS:
            if os.environ.get(name, "").strip():
                value, source = os.environ[name], name
                break
    token = (value or "").strip()
    if not token:
        raise AuthError(NO_TOKEN)
    if any(c.isspace() or not c.isprintable() for c in token):
        raise AuthError(f"the API token in {source} contains spaces or control characters")
    return token
