"""HTTP edge helpers: error bodies, capped JSON bodies, fault responses and dropped connections."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio.lowlevel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.emulator.faults import FaultSpec

__all__ = [
    "BodyError",
    "ConnectionDropped",
    "RawSend",
    "TruncatedResponse",
    "api_error",
    "drop_connection",
    "fault_response",
    "read_json_object",
]

log = logging.getLogger("orchestrator.emulator")

_PROXY_PAGE = (
    "<html><head><title>{status} Bad Gateway</title></head><body>"
    "<center><h1>{status} Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


def api_error(
    status: int,
    code: int,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The Model API's error body: ``{"error_code", "error_message", "detail"}``."""
    body = {"error_code": code, "error_message": message, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyError(Exception):
    """A request body the API refuses: too large, not JSON, or not an object."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        detail = [{"loc": ["body"], "msg": self.message, "type": "invalid_body"}]
        return api_error(self.status, 422001, f"invalid request body: {self.message}", detail)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; refuses over ``limit`` bytes before and while reading it."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyError(413, f"request body of {int(length)} bytes exceeds the {limit} byte cap")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"request body exceeds the {limit} byte cap")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise BodyError(422, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BodyError(422, f"body must be a JSON object, got {type(data).__name__}")
    return data


def fault_response(fault: FaultSpec) -> Response:
    """What a refusing fault answers; nothing behind it happened."""
    name = fault.name
    if name in ("rate_limit", "rate_cap"):
        seconds = fault.param("retry_after")
        headers = {"Retry-After": str(max(0, round(seconds)))}
        return api_error(429, 429001, "too many requests (emulated)", None, headers)
    if name in ("http_500", "http_503"):
        return api_error(int(name[-3:]), 500001, "internal server error (emulated)")
    if name in ("http_500_bare", "http_503_bare"):
        return Response(b"", status_code=int(name[5:8]))
    if name == "proxy_html":
        status = int(fault.param("status"))
        page = _PROXY_PAGE.format(status=status)
        return Response(page, status_code=status, media_type="text/html")
    if name == "error_200":
        return api_error(200, 500001, "server error (emulated; sent with HTTP 200)")
    if name == "refuse_input":
        detail = [{"loc": ["body"], "msg": "refused (emulated)", "type": "value_error"}]
        return api_error(422, 422001, "input does not match the model's schema (emulated)", detail)
    raise ValueError(f"{name} is not a refusing fault")


class ConnectionDropped(Exception):
    """Raised to drop a connection when the server gives no transport to close."""


class RawSend:
    """Outermost ASGI layer: keeps the server's own ``send`` in the scope for drop_connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["emulator.send"] = send
        await self.app(scope, receive, send)


async def drop_connection(request: Request) -> Response:
    """Close the socket without a response (uvicorn), so the client sees the connection drop.

    uvicorn's ``send`` is a bound method of its request cycle, which holds the transport. Once the
    transport is closed the cycle is marked disconnected and drops whatever is sent after.
    """
    cycle = getattr(request.scope.get("emulator.send"), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionDropped("connection dropped (emulated)")
    transport.close()
    for _ in range(20):
        if getattr(cycle, "disconnected", False):
            return Response(b"")
        await anyio.lowlevel.checkpoint()
    raise ConnectionDropped("connection dropped (emulated)")


class TruncatedResponse(Response):
    """Headers that promise the whole file, then only part of it, then the connection closes."""

    def __init__(
        self, body: bytes, total: int, headers: dict[str, str], media_type: str = "video/mp4"
    ) -> None:
        super().__init__(b"", media_type=media_type, headers=headers)
        self.partial = body
        self.headers["content-length"] = str(total)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.partial, "more_body": True})
        # Returning with the body incomplete makes uvicorn close the connection.
