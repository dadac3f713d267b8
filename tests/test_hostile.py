"""Whole runs against hostile and broken servers: a clear state and message each, no crash, no hang.

The server is a raw asyncio HTTP/1.1 server on 127.0.0.1 that answers like the Model API unless a
test scripts an endpoint otherwise, byte for byte (garbage, HTML, lies, silence). A second server
on 127.0.0.2 stands for "another host": it must never see a request, least of all the token.
The client's own reactions are unit-tested in test_client.py and test_client_wire.py; here each
fault goes through `run_sweep`, the store and the results folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import MAX_URLS
from orchestrator.emulator.media import render_mp4
from orchestrator.retry import RetryPolicy
from orchestrator.runner import RunReport
from orchestrator.store import JobState, Store
from orchestrator.sweep import Overrides, run_sweep

from .sweeps import write_spec

TOKEN = "hostile-Tk-5c9e2a7f"


def _video() -> bytes:
    """A real MP4 of the shape the spec asks for: outputs are verified before they are done."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.mp4"
        render_mp4(path, {"4_valuex3_value": "480x480 (1:1)", "25_value": 81, "38_value": 16})
        return path.read_bytes()


VIDEO = _video()
QUICK = Overrides(poll_interval=0.01, timeout=60.0)  # generous: a busy machine answers late
NO_WAIT = RetryPolicy(attempts=3, wait=False)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


# raw bytes to send, then close; None: never answer; an async iterator: pieces sent as they come
Answer = bytes | None | AsyncIterator[bytes]
Handler = Callable[[Request], Awaitable[Answer]]


def http(
    status: int, body: bytes | str = b"", *, ctype: str = "application/json", **extra: Any
) -> bytes:
    """A raw HTTP/1.1 response; ``content_length`` may lie, ``location`` redirects."""
    data = body.encode() if isinstance(body, str) else body
    length = extra.get("content_length", len(data))
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {ctype}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if "location" in extra:
        lines.append(f"Location: {extra['location']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def ok(value: Any) -> bytes:
    return http(200, json.dumps(value))


@dataclass
class Server:
    """A scripted HTTP server in a thread of its own; records every request it read."""

    host: str = "127.0.0.1"
    script: dict[str, Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(5)

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            first, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = first.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, path, headers, body)
            self.requests.append(request)
            answer = await self._answer(request)
            if answer is None:
                await asyncio.sleep(3600)  # silence, until the test ends
            elif isinstance(answer, bytes):
                writer.write(answer)
                await writer.drain()
            else:
                async for piece in answer:  # until the client hangs up
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, request: Request) -> Answer:
        path = request.path.split("?")[0]
        kind = _endpoint(request.method, path)
        handler = self.script.get(kind)
        if handler is not None:
            return await handler(request)
        return await self._happy(kind, path)

    async def _happy(self, kind: str, path: str) -> Answer:
        """The Model API's happy path: every job succeeds at once with one small video."""
        rid = path.split("/")[3] if kind in ("status", "result") else ""
        if kind == "catalog":
            return ok({"model_id": "m", "base_price_usd": 0.05, "price_unit": "second"})
        if kind == "submit":
            rid = f"r{len(self.requests)}"
            return ok({"request_id": rid})
        if kind == "status":
            return ok({"request_id": rid, "status": "completed"})
        if kind == "result":
            url = f"{self.origin}/files/{rid}.mp4"
            return ok(
                {"request_id": rid, "status": "succeeded", "output": {"video": url}, "cost": 0.25}
            )
        if kind == "download":
            return http(200, VIDEO, ctype="video/mp4")
        return http(404, "{}")


def _endpoint(method: str, path: str) -> str:
    if path.startswith("/files/"):
        return "download"
    if path.startswith("/v1/requests/"):
        return path.rsplit("/", 1)[-1]
    if path.startswith("/v1/models/"):
        return "submit" if method == "POST" else "catalog"
    return "other"


@pytest.fixture
def api() -> Iterator[Server]:
    server = Server()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def elsewhere() -> Iterator[Server]:
    """Another host (127.0.0.2): it must never hear from us."""
    server = Server(host="127.0.0.2")
    server.start()
    try:
        yield server
    finally:
        server.close()
        assert server.requests == []


def run(tmp_path: Path, api: Server, overrides: Overrides = QUICK) -> tuple[RunReport, Path]:
    spec = write_spec(tmp_path)
    report = run_sweep(
        spec, base_url=f"{api.origin}/v1", token=TOKEN, overrides=overrides, retry=NO_WAIT
    )
    folder = tmp_path / "results" / "grid"
    assert list((folder / ".partial").iterdir()) == []
    for path in folder.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in " ".join(report.messages) + (report.stop_reason or "")
    return report, folder


def details(folder: Path, state: JobState) -> list[str]:
    """The detail of the event that moved each job in ``state`` there."""
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        out = []
        for row in db.jobs([state]):
            event = [e for e in db.events(row.key) if e.to_state == state][-1]
            out.append(event.detail or "")
        return out


def errors(folder: Path, state: JobState) -> list[str]:
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        return [str(row.error) for row in db.jobs([state])]


def answer(raw: bytes) -> Handler:
    async def handler(request: Request) -> Answer:
        return raw

    return handler


async def silence(request: Request) -> Answer:
    return None


async def trickle(request: Request) -> Answer:
    """Headers at once, then one body byte at a time, forever: no single read ever times out."""

    async def pieces() -> AsyncIterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99999\r\n\r\n"
        while True:
            await asyncio.sleep(0.02)
            yield b" "

    return pieces()


def log_lines(folder: Path) -> list[str]:
    """run.log's lines that do not start like a line the logger wrote: each one is forged."""
    lines = (folder / "run.log").read_text().splitlines()
    written = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+:\d+ [A-Z]+ comfysweep")
    return [line for line in lines if not written.match(line)]


def nth_submit(n: int, body: str) -> Handler:
    """Answer the ``n``th submit (1-based) with ``body``, every other one as the API would."""
    seen = 0

    async def handler(request: Request) -> Answer:
        nonlocal seen
        seen += 1
        return http(200, body) if seen == n else ok({"request_id": f"r{seen}"})

    return handler


def first_result(body: Callable[[str], str]) -> Handler:
    """The first job asked about gets ``body(rid)`` as its result, every other one the usual."""
    chosen: list[str] = []

    async def handler(request: Request) -> Answer:
        rid = request.path.split("/")[3]
        chosen[:] = chosen or [rid]
        if rid == chosen[0]:
            return http(200, body(rid))
        url = f"http://{request.headers['host']}/files/{rid}.mp4"
        return ok(
            {"request_id": rid, "status": "succeeded", "output": {"video": url}, "cost": 0.25}
        )

    return handler


def test_the_happy_script_is_a_complete_run(tmp_path: Path, api: Server) -> None:
    report, folder = run(tmp_path, api)
    assert report.complete, report
    for path in folder.glob("*.mp4"):
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(VIDEO).digest()
    assert all(r.headers.get("authorization") is None for r in api.requests if "/files/" in r.path)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (http(200, "\x00\x01garbage\xff"), "without a request id"),
        (http(200, "[1, 2, 3]"), "without a request id"),
        (http(200, '"a string"'), "without a request id"),
        (http(200, "{}"), "without a request id"),
        (http(502, "<html><body>Bad Gateway</body></html>", ctype="text/html"), "HTTP 502"),
        (http(500, "not json at all", ctype="text/plain"), "HTTP 500"),
        (b"SPDY/9 nonsense\r\n\r\n", "answer was lost"),
        (b"", "answer was lost"),
    ],
    ids=["garbage", "list", "string", "no-id", "html-502", "text-500", "not-http", "closed"],
)
def test_a_submit_answered_with_nonsense_is_unknown_and_never_resent(
    tmp_path: Path, api: Server, raw: bytes, why: str
) -> None:
    api.script["submit"] = answer(raw)
    report, folder = run(tmp_path, api)
    # Three answers lost in a row stop the sweep (a fourth may already have been on its way).
    unknown = report.counts["unknown"]
    assert unknown >= 3, report
    assert unknown + report.counts["pending"] == 4, report
    assert report.fatal
    assert "in a row" in (report.stop_reason or "")
    submits = [r for r in api.requests if r.method == "POST"]
    assert len(submits) == unknown  # each job sent once, none again
    assert len({r.body for r in submits}) == unknown
    assert all(why in d for d in details(folder, JobState.UNKNOWN)), details(
        folder, JobState.UNKNOWN
    )


def test_a_submit_redirected_to_another_host_is_unknown_and_not_followed(
    tmp_path: Path, api: Server, elsewhere: Server
) -> None:
    api.script["submit"] = answer(http(307, "", location=f"{elsewhere.origin}/v1/models/x"))
    report, folder = run(tmp_path, api)
    assert report.counts["unknown"] + report.counts["pending"] == 4, report
    assert report.counts["unknown"] >= 3, report
    assert all("HTTP 307" in d for d in details(folder, JobState.UNKNOWN))


@pytest.mark.parametrize(
    "raw",
    [
        http(200, "<html>maintenance</html>", ctype="text/html"),
        http(200, "[]"),
        http(200, "42"),
        http(200, '{"no": "status"}'),
        http(503, ""),
        b"garbage\r\n\r\n",
    ],
    ids=["html-200", "list", "number", "no-status", "bare-503", "not-http"],
)
def test_status_answers_that_make_no_sense_leave_jobs_queued_and_the_run_ends(
    tmp_path: Path, api: Server, raw: bytes
) -> None:
    api.script["result"] = answer(raw)  # a run polls the result endpoint alone
    report, folder = run(tmp_path, api)
    assert report.counts["queued"] + report.counts["running"] >= 1, report
    assert report.counts["done"] == 0
    assert "polling keeps failing" in (report.stop_reason or ""), report
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        assert all(row.request_id for row in db.jobs([JobState.QUEUED]))  # resumable later


def test_a_status_redirect_to_another_host_is_not_followed(
    tmp_path: Path, api: Server, elsewhere: Server
) -> None:
    api.script["result"] = answer(http(302, "", location=f"{elsewhere.origin}/steal"))
    report, _ = run(tmp_path, api)
    assert report.counts["done"] == 0
    assert report.stop_reason


@pytest.mark.parametrize("where", ["output", "redirect"])
def test_an_output_on_a_host_that_is_not_allowed_is_refused_and_stays_downloadable(
    tmp_path: Path, api: Server, elsewhere: Server, where: str
) -> None:
    if where == "output":

        async def result(request: Request) -> Answer:
            rid = request.path.split("/")[3]
            url = f"{elsewhere.origin}/files/{rid}.mp4"
            return ok({"request_id": rid, "status": "succeeded", "output": {"video": url}})

        api.script["result"] = result
    else:
        api.script["download"] = answer(http(302, "", location=f"{elsewhere.origin}/x.mp4"))
    report, folder = run(tmp_path, api)
    assert report.counts["succeeded"] == 4, report  # paid, kept, downloadable once sorted out
    assert all("refusing" in e and "127.0.0.2" in e for e in errors(folder, JobState.SUCCEEDED))
    assert any("download failed" in m for m in report.messages)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (
            http(200, VIDEO[:100], ctype="video/mp4", content_length=len(VIDEO)),
            "received 100",  # httpx's transport: "100 bytes, expected", aiohttp's: "100 of"
        ),
        (
            http(200, VIDEO[: len(VIDEO) // 2], ctype="video/mp4", content_length=None),
            "cut short",
        ),
        (http(200, VIDEO, ctype="video/mp4", content_length=3 * 1024**3), "limit"),
        (http(500, "<html>oops</html>", ctype="text/html"), "HTTP 500"),
    ],
    ids=["short-body", "cut-without-length", "over-the-cap", "html-500"],
)
def test_downloads_that_lie_fail_clearly_and_stay_downloadable(
    tmp_path: Path, api: Server, raw: bytes, why: str
) -> None:
    api.script["download"] = answer(raw)
    report, folder = run(tmp_path, api)
    assert report.counts["succeeded"] == 4, report
    assert all(why in e for e in errors(folder, JobState.SUCCEEDED)), errors(
        folder, JobState.SUCCEEDED
    )
    assert not list(folder.glob("*.mp4"))


def test_an_expired_output_is_recorded_expired_with_its_reason(tmp_path: Path, api: Server) -> None:
    api.script["download"] = answer(http(410, "Gone", ctype="text/plain"))
    report, folder = run(tmp_path, api)
    assert report.counts["expired"] == 4, report
    assert all("expired" in d and "410" in d for d in details(folder, JobState.EXPIRED))


@pytest.mark.parametrize("endpoint", ["catalog", "submit", "result", "download"])
def test_a_server_that_never_answers_ends_the_run_within_its_timeouts(
    tmp_path: Path, api: Server, endpoint: str
) -> None:
    api.script[endpoint] = silence
    report, folder = run(tmp_path, api, Overrides(poll_interval=0.01, timeout=0.2))
    if endpoint == "catalog":
        assert report.complete, report  # prices are unknown, the sweep runs anyway
    elif endpoint == "submit":
        assert report.counts["unknown"] + report.counts["pending"] == 4, report
        assert report.counts["unknown"] >= 3, report
        assert all("ReadTimeout" in d for d in details(folder, JobState.UNKNOWN))
    elif endpoint == "result":  # the only endpoint a run polls
        assert report.counts["queued"] == 3, report  # concurrency 3: the 4th was never sent
        assert report.counts["pending"] == 1
        assert "polling keeps failing" in (report.stop_reason or "")
    else:
        assert report.counts["succeeded"] == 4, report
        assert all("Timeout" in e for e in errors(folder, JobState.SUCCEEDED))


def test_cli_run_with_a_short_timeout_ends_against_silence(tmp_path: Path, api: Server) -> None:
    api.script["submit"] = silence
    spec = write_spec(tmp_path)
    env = {**os.environ, "RUNCOMFY_MODEL_API_BASE": f"{api.origin}/v1", "RUNCOMFY_API_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(spec), "--timeout", "0.3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # lost answers in a row stop the sweep
    assert "submits in a row lost their answer" in done.stderr.splitlines()[-1]
    assert " unknown" in done.stdout
    assert "retry SPEC --unknown" in done.stdout
    assert "Traceback" not in done.stderr
    assert TOKEN not in done.stdout + done.stderr


# -- values out of bounds: a clear state for the job, the others' paid outputs downloaded --------


@pytest.mark.parametrize(
    ("rid", "why"),
    [
        ('"' + "x" * 65536 + '"', "request id of 65536 characters (at most 128)"),
        ('"r1\\n2026-01-01 00:00:00,000 forged:1 INFO comfysweep: all paid"', "characters outside"),
        ('"../../etc"', "characters outside"),
        ("[1]", "a JSON list"),
        ('".."', "of dots only"),  # was `lost`: requests/../status asked about something else
        ('"."', "of dots only"),
    ],
    ids=["64KiB", "newline", "slash", "list", "dot-dot", "dot"],
)
def test_a_submit_answered_with_a_request_id_out_of_bounds_is_unknown_and_never_resent(
    tmp_path: Path, api: Server, rid: str, why: str
) -> None:
    api.script["submit"] = nth_submit(1, '{"request_id": ' + rid + "}")
    report, folder = run(tmp_path, api)
    assert report.counts["unknown"] == 1, report
    assert report.counts["done"] == 3, report
    assert len([r for r in api.requests if r.method == "POST"]) == 4  # never resent
    unknown = details(folder, JobState.UNKNOWN)
    assert all(why in d and "may exist and be billed" in d for d in unknown), unknown
    assert log_lines(folder) == []


@pytest.mark.parametrize(
    "body",
    [
        '{"status": "succeeded", "output": {"video": "URL"}, "cost": NaN}',
        '{"status": "succeeded", "output": {"video": "URL"}, "cost": Infinity, "t": -Infinity}',
        '{"status": "succeeded", "output": {"video": "URL"}, "cost": 1e999, "n": [NaN]}',
        '{"status": "succeeded", "output": {"video": "URL"}, "cost": "nan"}',
        '{"status": "succeeded", "output": {"video": "URL"}, "cost": 1' + "0" * 5000 + "}",
    ],
    ids=["nan", "infinity", "overflow", "nan-string", "5000-digits"],
)
def test_non_finite_numbers_in_a_result_are_read_as_null_and_the_output_downloaded(
    tmp_path: Path, api: Server, body: str
) -> None:
    api.script["result"] = first_result(
        lambda rid: body.replace("URL", f"{api.origin}/files/{rid}.mp4")
    )
    report, folder = run(tmp_path, api)
    assert report.complete, report
    assert len(list(folder.glob("*.mp4"))) == 4
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        costs = [row.cost for row in db.jobs([JobState.DONE])]
    assert costs.count(None) == 1, costs  # the NaN one: read as null
    assert "NaN" not in (folder / "manifest.jsonl").read_text()


def test_non_finite_numbers_in_a_status_are_read_as_null(tmp_path: Path, api: Server) -> None:
    answered: list[bool] = []

    async def result(request: Request) -> Answer:  # the first poll answers NaN, then as usual
        if not answered:
            answered.append(True)
            return http(200, '{"status": "in_queue", "queue_position": NaN, "eta": -Infinity}')
        return await api._happy("result", request.path.split("?")[0])

    api.script["result"] = result
    report, folder = run(tmp_path, api)
    assert report.complete, report
    assert "non-finite" in (folder / "run.log").read_text()


def test_a_result_with_more_urls_than_the_cap_fails_clearly_and_downloads_nothing(
    tmp_path: Path, api: Server
) -> None:
    many = 2000

    def body(rid: str) -> str:
        urls = [f"{api.origin}/files/{rid}-{n}.mp4" for n in range(many)]
        return json.dumps({"status": "succeeded", "output": {"videos": urls}, "cost": 0.5})

    api.script["result"] = first_result(body)
    report, folder = run(tmp_path, api)
    assert report.counts["failed"] == 1, report
    assert report.counts["done"] == 3, report
    [detail] = details(folder, JobState.FAILED)
    assert f"lists {many} output URLs" in detail, detail
    assert f"cap of {MAX_URLS}" in detail, detail
    assert not [r for r in api.requests if r.path.startswith("/files/") and "-" in r.path]
    with Store.open(folder / "comfysweep.db", readonly=True) as db:
        [failed] = db.jobs([JobState.FAILED])
    assert failed.cost == 0.5  # paid for all the same: counted


# -- deadlines: a server trickling bytes cannot hang the run -----------------------------------


@pytest.mark.parametrize("endpoint", ["submit", "download"])
def test_a_server_trickling_bytes_ends_the_run_by_the_total_deadline(
    tmp_path: Path, api: Server, endpoint: str
) -> None:
    api.script[endpoint] = trickle
    report, folder = run(tmp_path, api, Overrides(poll_interval=0.01, timeout=0.3))
    if endpoint == "submit":
        # each submit sent once and its answer never completed: unknown, never resent
        assert report.counts["unknown"] >= 3, report
        assert report.counts["unknown"] + report.counts["pending"] == 4, report
        assert len([r for r in api.requests if r.method == "POST"]) == report.counts["unknown"]
        assert all("DeadlineExceeded" in d for d in details(folder, JobState.UNKNOWN))
    else:
        assert report.counts["succeeded"] == 4, report  # paid, kept, downloadable next run
        assert all("DeadlineExceeded" in e for e in errors(folder, JobState.SUCCEEDED))
        assert not list(folder.glob("*.mp4"))


# -- download origins ------------------------------------------------------------------------


def test_an_output_on_another_port_of_the_api_host_is_refused(tmp_path: Path, api: Server) -> None:
    other = Server()  # the same host, another port: another origin
    other.start()
    try:

        async def result(request: Request) -> Answer:
            rid = request.path.split("/")[3]
            url = f"{other.origin}/files/{rid}.mp4"
            return ok({"request_id": rid, "status": "succeeded", "output": {"video": url}})

        api.script["result"] = result
        report, folder = run(tmp_path, api)
    finally:
        other.close()
    assert other.requests == []
    assert report.counts["succeeded"] == 4, report
    assert all(
        "refusing" in e and f"127.0.0.1:{other.port}" in e
        for e in errors(folder, JobState.SUCCEEDED)
    ), errors(folder, JobState.SUCCEEDED)


@pytest.mark.parametrize(
    "url", ["URL\\nforged", "URL\\u0000x", "URL" + "a" * 10_000], ids=["newline", "nul", "10k"]
)
def test_an_output_url_that_cannot_be_fetched_fails_clearly_not_succeeded_forever(
    tmp_path: Path, api: Server, url: str
) -> None:
    body = '{"status": "succeeded", "output": {"video": "' + url + '"}, "cost": 0.5}'
    api.script["result"] = first_result(
        lambda rid: body.replace("URL", f"{api.origin}/files/{rid}.mp4")
    )
    report, folder = run(tmp_path, api)
    assert report.counts["failed"] == 1, report  # was `succeeded`: refused again on every run
    assert report.counts["done"] == 3, report
    [detail] = details(folder, JobState.FAILED)
    assert "an output URL that cannot be fetched" in detail, detail
    assert log_lines(folder) == []
