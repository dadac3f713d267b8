"""`comfysweep report --serve`: the report page from a local server, where cells can be rated.

The server answers the page (built afresh on each load, so it shows new jobs and the ratings
as stored), the results folder's files (never a path outside it, whatever ``..`` or a symlink
says), and ``POST api/rating``, which records a rating with Store.rate in one short transaction:
safe while a run is live (SQLite WAL lets the run and this writer take turns). A rating must
come from the page itself: a JSON body and, when the browser says where it comes from, the
server's own origin (another site cannot rate through the user's browser).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.errors import StoreBusyError, StoreError
from orchestrator.locate import Located
from orchestrator.report.build import DEFAULT_AXES, Axes, load_view, results_of
from orchestrator.report.page import render_page
from orchestrator.report.posters import ASSETS, Posters
from orchestrator.report.view import add_posters
from orchestrator.results import STORE_FILE
from orchestrator.store import Store
from orchestrator.store.store import RATING_VALUES

__all__ = ["create_app", "serve_report"]


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_BODY = 1 << 20  # a rating is a key and a row of keys


def create_app(
    located: Located,
    axes: Axes = DEFAULT_AXES,
    *,
    hosts: Sequence[str] = LOOPBACK,
    any_address: bool = False,
) -> Starlette:
    """The report server's ASGI app (bad axes raise ReportError here, before it serves).

    ``hosts``: the Host names it answers, and with ``any_address`` any IP address too (a server
    on every interface, reached by this machine's address); a page of another site that
    rebinds its own name to this machine is refused, so it can neither read the sweep nor rate it.
    """
    results = results_of(located)
    root = Path(os.path.realpath(results))
    store = Path(os.path.realpath(located.store))  # whatever its name: never served
    load_view(located, axes)

    def page(request: Request) -> Response:
        view = load_view(located, axes)
        add_posters(view, results, results, Posters(results / ASSETS))
        return HTMLResponse(render_page(view, served=True), headers={"cache-control": "no-store"})

    async def rating(request: Request) -> Response:
        try:
            body = await _json_from_own_page(request)
        except _Refused as refused:
            return refused.response
        problem = _bad_rating(body)
        if problem:
            return _problem(400, problem)
        try:
            with Store.open(located.store) as store:
                store.rate(body["key"], body["rating"], clear=body.get("row") or ())
        except StoreBusyError as exc:
            return _problem(503, str(exc))
        except StoreError as exc:
            return _problem(400, str(exc))
        return JSONResponse({"key": body["key"], "rating": body["rating"]})

    def ratings(request: Request) -> Response:
        with Store.open(located.store, readonly=True) as store:
            return JSONResponse(store.ratings())

    def file(request: Request) -> Response:
        wanted = request.path_params["path"]
        target = Path(os.path.realpath(root / wanted))
        if not target.is_relative_to(root) or target == root or not target.is_file():
            return _problem(404, "not found")
        first = target.relative_to(root).parts[0]
        if first.startswith(STORE_FILE) or _store_file(target, store):
            return _problem(404, "not found")
        return FileResponse(target)

    return Starlette(
        middleware=[Middleware(_HostCheck, names=list(hosts), any_address=any_address)],
        routes=[
            Route("/", page),
            Route("/report.html", page),
            Route("/api/rating", rating, methods=["POST"]),
            Route("/api/ratings", ratings),
            Route("/{path:path}", file),
        ],
    )


class _HostCheck:
    """Answers only requests whose Host is one of ``names`` or (``any_address``) an IP address."""

    def __init__(self, app: ASGIApp, names: Sequence[str], any_address: bool) -> None:
        self.app = app
        self.names = {n.lower().strip("[]") for n in names}
        self.any_address = any_address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._allowed(
            Headers(scope=scope).get("host", "")
        ):
            await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, header: str) -> bool:
        host = header.lower()
        if host.startswith("["):
            host = host[1 : host.find("]")] if "]" in host else ""
        elif host.count(":") == 1:
            host = host.split(":")[0]
        if host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return self.any_address


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = _problem(status, message)


async def _json_from_own_page(request: Request) -> Any:
    """The request's JSON body, refused unless JSON, from the server's own origin (when the
    browser names one), at most MAX_BODY bytes."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise _Refused(415, "send the rating as application/json")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise _Refused(403, f"ratings come from this server's own page, not from {origin}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _Refused(413, "a rating's body is at most 1 MiB")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # "[[[[..." nests past the parser's depth
        raise _Refused(400, "the body is not JSON") from None


def _store_file(target: Path, store: Path) -> bool:
    """``target`` is the store or one of its -wal, -shm, -journal or .lock files."""
    return target.parent == store.parent and target.name.startswith(store.name)


def _problem(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _bad_rating(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("key"), str):
        return 'give {"key": KEY, "rating": "up"|"down"|"pick"|null, "row": [KEY, ...]}'
    if body.get("rating") is not None and body.get("rating") not in RATING_VALUES:
        return f"rating {body.get('rating')!r} is not one of {', '.join(RATING_VALUES)} or null"
    row = body.get("row", [])
    if not isinstance(row, list) or not all(isinstance(k, str) for k in row):
        return "row: a list of job keys"
    return None


def serve_report(
    located: Located,
    axes: Axes = DEFAULT_AXES,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Serve the report until interrupted; the page's URL is the first line ``echo`` gets, and
    ``warn`` says so when the server is reachable from other machines."""
    from orchestrator.emulator.server import bind

    wildcard = host in ("0.0.0.0", "::", "")
    names = [*LOOPBACK, host, *((socket.gethostname(), socket.getfqdn()) if wildcard else ())]
    app = create_app(located, axes, hosts=names, any_address=wildcard)
    sock = bind(host, port)
    for signum in (signal.SIGINT, signal.SIGTERM):  # before the URL: a Ctrl-C then exits quietly
        signal.signal(signum, _exit_quietly)
    shown_host, shown_port = sock.getsockname()[:2]
    if shown_host in ("0.0.0.0", "::"):
        shown_host = "127.0.0.1"
    shown = f"[{shown_host}]" if ":" in shown_host else shown_host
    echo(f"http://{shown}:{shown_port}/")
    sys.stdout.flush()
    if not _loopback(host):
        warn(
            f"warning: --host {host} serves the report to every network this machine is on: "
            f"anyone who reaches port {shown_port} sees the sweep and can rate it"
        )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)
