from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.client import (
    MAX_ANSWER_BYTES,
    MAX_REQUEST_ID,
    MAX_URLS,
    ModelApiClient,
    RemoteState,
    collect_urls,
    error_message,
)
from orchestrator.download import download_allowed
from orchestrator.errors import (
    ApiError,
    AuthError,
    BalanceError,
    ComfysweepError,
    DownloadError,
    ModelNotFound,
    OutcomeUnknown,
    OutputExpired,
    RequestNotFound,
    ServerError,
    TransportError,
    ValidationFailed,
)
from orchestrator.retry import RetryPolicy

BASE = "https://model-api.runcomfy.net/v1"
TOKEN = "sk-secret-token-0123456789"
MODEL = "community/wan-2-2/vace-fun"
INPUTS = {"56_text": "a fox", "98_seed": 1}
CDN = "https://playgrounds-storage-public.runcomfy.net/out/abc.mp4"
ATTEMPTS = RetryPolicy().attempts

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Server:
    """A scripted MockTransport: answers in order (the last one repeats), records requests."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    @property
    def count(self) -> int:
        return len(self.requests)


def client(server: Server, **kwargs: Any) -> ModelApiClient:
    kwargs.setdefault("retry", RetryPolicy(wait=False))
    return ModelApiClient(BASE, TOKEN, transport=httpx.MockTransport(server), **kwargs)


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def html(status: int) -> httpx.Response:
    page = f"<html><body><h1>{status} Bad Gateway</h1><p>nginx</p></body></html>"
    return httpx.Response(status, text=page, headers={"content-type": "text/html"})


SUBMITTED = {
    "request_id": "6f1c-abc",
    "status_url": f"{BASE}/requests/6f1c-abc/status",
    "result_url": f"{BASE}/requests/6f1c-abc/result",
    "cancel_url": f"{BASE}/requests/6f1c-abc/cancel",
}


# -- configuration ---------------------------------------------------------------------------


async def _submit_path(base: str | None) -> str:
    server = Server(ok(SUBMITTED))
    async with ModelApiClient(base, TOKEN, transport=httpx.MockTransport(server)) as api:
        await api.submit(MODEL, INPUTS)
    return str(server.requests[0].url)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "base",
    [
        "https://model-api.runcomfy.net/v1",
        "https://model-api.runcomfy.net/v1/",
        "https://model-api.runcomfy.net",
        "  https://model-api.runcomfy.net/v1//  ",
    ],
)
async def test_base_url_ends_in_v1_exactly_once(base: str) -> None:
    assert await _submit_path(base) == f"{BASE}/models/{MODEL}"


@pytest.mark.anyio
async def test_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", "http://127.0.0.1:8123/v1/")
    assert await _submit_path(None) == f"http://127.0.0.1:8123/v1/models/{MODEL}"


def test_default_base_url() -> None:
    assert ModelApiClient(token=TOKEN).base_url == BASE


@pytest.mark.parametrize("base", ["ftp://example.com/v1", "not a url", "http:///v1"])
def test_bad_base_url_names_the_variable(base: str) -> None:
    with pytest.raises(TransportError, match="RUNCOMFY_MODEL_API_BASE"):
        ModelApiClient(base, TOKEN)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("http://api.example.com/v1", "plain http would send the API token in the clear"),
        ("http://exa mple.com/v1", "expected an http(s) URL"),
        ("https://user:secret@example.com/v1", "must not hold a user name or password"),
    ],
)
def test_a_base_url_that_would_leak_the_token_is_refused(base: str, message: str) -> None:
    with pytest.raises(
        TransportError, match=f"^RUNCOMFY_MODEL_API_BASE: {re.escape(message)}"
    ) as caught:
        ModelApiClient(base, TOKEN)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("base", ["http://localhost:8123/v1", "http://[::1]:8123/v1"])
def test_plain_http_is_for_an_emulator_on_this_machine(base: str) -> None:
    assert ModelApiClient(base, TOKEN).base_url == base


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("tökén", "non-ASCII"),  # was a UnicodeEncodeError traceback on the first request
        ("tok\nen", "control"),
        ("\u202eevil", "control"),
        ("a" * 5000, "is 5000 characters; at most 4096"),
    ],
)
def test_a_token_that_cannot_be_a_header_is_one_line_never_echoed(
    monkeypatch: pytest.MonkeyPatch, token: str, message: str
) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", token)
    with pytest.raises(AuthError, match=r"^the API token in RUNCOMFY_API_TOKEN ") as caught:
        ModelApiClient(BASE)
    assert message in str(caught.value)
    assert token not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_token_says_how_to_get_one() -> None:
    with pytest.raises(AuthError) as info:
        ModelApiClient(BASE)
    assert "RUNCOMFY_API_TOKEN" in str(info.value)
    assert "https://www.runcomfy.com" in str(info.value)
    assert "--emulator" in str(info.value)


def test_blank_token_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "   ")
    with pytest.raises(AuthError, match="no API token"):
        ModelApiClient(BASE)


def test_token_with_a_newline_is_refused_without_echoing_it() -> None:
    with pytest.raises(AuthError) as info:
        ModelApiClient(BASE, "abc\ndef")
    assert "abc" not in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("env", "sent"),
    [
        ({"RUNCOMFY_API_TOKEN": "first", "RUNCOMFY_TOKEN": "second"}, "first"),
        ({"RUNCOMFY_TOKEN": "second"}, "second"),
    ],
)
async def test_token_precedence(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], sent: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = Server(ok(SUBMITTED))
    async with ModelApiClient(BASE, transport=httpx.MockTransport(server)) as api:
        await api.submit(MODEL, INPUTS)
    assert server.requests[0].headers["authorization"] == f"Bearer {sent}"


# -- submit ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 201, 202])
async def test_submit_accepts_any_2xx(status: int) -> None:
    server = Server(ok(SUBMITTED, status))
    async with client(server) as api:
        submitted = await api.submit(MODEL, INPUTS)
    assert submitted.request_id == "6f1c-abc"
    assert submitted.result_url == SUBMITTED["result_url"]
    request = server.requests[0]
    assert request.method == "POST"
    assert request.url.raw_path == b"/v1/models/community/wan-2-2/vace-fun"
    assert json.loads(request.content) == INPUTS
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_submit_builds_the_urls_the_answer_leaves_out() -> None:
    server = Server(ok({"request_id": 42}))
    async with client(server) as api:
        submitted = await api.submit(MODEL, INPUTS)
    assert submitted.request_id == "42"
    assert submitted.status_url == f"{BASE}/requests/42/status"
    assert submitted.cancel_url == f"{BASE}/requests/42/cancel"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("Connection refused"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.ConnectTimeout("timed out"),
        httpx.PoolTimeout("no connection free"),
    ],
)
async def test_submit_retries_what_never_left(error: Exception) -> None:
    server = Server(error, error, ok(SUBMITTED))
    async with client(server) as api:
        submitted = await api.submit(MODEL, INPUTS)
    assert submitted.request_id == "6f1c-abc"
    assert server.count == 3


@pytest.mark.anyio
async def test_submit_that_never_reaches_the_server_is_not_an_unknown_outcome() -> None:
    server = Server(httpx.ConnectError("Connection refused"))
    async with client(server) as api:
        with pytest.raises(TransportError) as info:
            await api.submit(MODEL, INPUTS)
    assert not isinstance(info.value, OutcomeUnknown)
    assert "nothing was sent" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert server.count == ATTEMPTS


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("timed out"),
        httpx.WriteTimeout("timed out"),
        httpx.ReadError("connection reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ProxyError("proxy went away"),
    ],
)
async def test_submit_sent_without_an_answer_is_unknown_and_never_retried(error: Exception) -> None:
    server = Server(error, ok(SUBMITTED))
    async with client(server) as api:
        with pytest.raises(OutcomeUnknown) as info:
            await api.submit(MODEL, INPUTS)
    assert server.count == 1
    assert info.value.__cause__ is error
    assert "may exist and be billed" in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        ok({"error_code": 500001, "error_message": "server error"}, 500),
        html(502),
        httpx.Response(503, text="Service Unavailable"),
        ok({"detail": "upstream timed out"}, 504),
        ok({}, 408),
        httpx.Response(303, headers={"location": f"{BASE}/requests/6f1c-abc/status"}),
        ok({"request_id": ""}),
        ok({"status": "in_queue"}),
        ok(["6f1c-abc"]),
        html(200),
        httpx.Response(200, content=b""),
        ok({"error_code": 500001, "error_message": "oops"}),
    ],
)
async def test_submit_with_an_unusable_answer_is_unknown_and_never_retried(
    answer: httpx.Response,
) -> None:
    server = Server(answer, ok(SUBMITTED))
    async with client(server) as api:
        with pytest.raises(OutcomeUnknown):
            await api.submit(MODEL, INPUTS)
    assert server.count == 1


@pytest.mark.anyio
async def test_submit_5xx_keeps_the_server_error_as_its_cause() -> None:
    body = {"error_code": 500001, "error_message": "database down"}
    server = Server(ok(body, 500))
    async with client(server) as api:
        with pytest.raises(OutcomeUnknown, match="database down") as info:
            await api.submit(MODEL, INPUTS)
    assert isinstance(info.value.__cause__, ServerError)
    assert info.value.__cause__.error_code == 500001


@pytest.mark.anyio
async def test_submit_429_is_a_refusal_and_retried() -> None:
    server = Server(ok({"error_code": 429, "error_message": "slow down"}, 429), ok(SUBMITTED))
    async with client(server) as api:
        submitted = await api.submit(MODEL, INPUTS)
    assert submitted.request_id == "6f1c-abc"
    assert server.count == 2


@pytest.mark.anyio
async def test_submit_429_forever_ends_as_a_server_error_nothing_created() -> None:
    server = Server(html(429))
    async with client(server) as api:
        with pytest.raises(ServerError) as info:
            await api.submit(MODEL, INPUTS)
    assert not isinstance(info.value, OutcomeUnknown)
    assert info.value.status_code == 429
    assert server.count == ATTEMPTS


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the waits tenacity would sleep, instead of sleeping them."""
    recorded: list[float] = []
    original = RetryPolicy.retrying

    def retrying(self: RetryPolicy, retryable: Any, what: str, *args: Any) -> Any:
        controller = original(self, retryable, what, *args)

        async def sleep(seconds: float) -> None:
            recorded.append(seconds)

        controller.sleep = sleep  # type: ignore[assignment]
        return controller

    monkeypatch.setattr(RetryPolicy, "retrying", retrying)
    return recorded


@pytest.mark.anyio
async def test_retry_after_in_seconds_is_honoured(sleeps: list[float]) -> None:
    server = Server(ok({}, 429, **{"Retry-After": "7"}), ok(SUBMITTED))
    async with client(server, retry=RetryPolicy(jitter=0.0)) as api:
        await api.submit(MODEL, INPUTS)
    assert sleeps == [7.0]


@pytest.mark.anyio
async def test_retry_after_as_a_date_is_honoured(sleeps: list[float]) -> None:
    later = email.utils.formatdate(time.time() + 90, usegmt=True)
    server = Server(ok({}, 503, **{"Retry-After": later}), ok({"status": "in_queue"}))
    async with client(server, retry=RetryPolicy(jitter=0.0)) as api:
        await api.status("r1")
    assert len(sleeps) == 1
    assert 80.0 < sleeps[0] <= 90.0


@pytest.mark.anyio
async def test_backoff_without_retry_after(sleeps: list[float]) -> None:
    server = Server(html(502), html(502), html(502), ok({"status": "in_queue"}))
    async with client(server, retry=RetryPolicy(initial=0.5, jitter=0.0)) as api:
        await api.status("r1")
    assert sleeps == [0.5, 1.0, 2.0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (ok({"error_code": 400004, "error_message": "invalid token"}, 401), AuthError),
        (html(401), AuthError),
        (ok({"error_code": 401001, "message": "unauthorized"}, 401), AuthError),
        (ok({"error_code": 400004, "error_message": "inactive account"}), AuthError),
        (ok({"error_code": 400002, "error_message": "no balance"}, 402), BalanceError),
        (ok({"error_code": 400002, "error_message": "no balance"}, 400), BalanceError),
        (ok({"error": "payment required"}, 402), BalanceError),
        (ok({"error_code": 10003, "error_message": "insufficient funds"}, 403), BalanceError),
        (ok({"error_code": "400002", "error_message": "no balance"}), BalanceError),
        (ok({"error_code": 400001, "error_message": "unknown model"}, 400), ModelNotFound),
        (ok({"detail": "Not Found"}, 404), ModelNotFound),
        (html(404), ModelNotFound),
        (
            ok({"error_code": 422001, "detail": [{"loc": ["body", "38_value"]}]}, 422),
            ValidationFailed,
        ),
        (ok({"error_code": 422001, "detail": [{"field": "25_value"}]}, 400), ValidationFailed),
        (ok({"detail": "bad input"}, 422), ValidationFailed),
        (ok({"error_code": 403001, "error_message": "not yours"}, 403), ApiError),
        (ok({"message": "bad request"}, 400), ApiError),
        (html(400), ApiError),
        (ok([1, 2, 3], 409), ApiError),
    ],
)
async def test_submit_refusals_map_to_their_error(
    answer: httpx.Response, kind: type[ApiError]
) -> None:
    server = Server(answer, ok(SUBMITTED))
    async with client(server) as api:
        with pytest.raises(ApiError) as info:
            await api.submit(MODEL, INPUTS)
    assert type(info.value) is kind
    assert not isinstance(info.value, ServerError)
    assert server.count == 1
    assert MODEL in str(info.value)


@pytest.mark.anyio
async def test_huge_error_messages_are_cut() -> None:
    server = Server(ok({"error_message": "x" * 100_000}, 400))
    async with client(server) as api:
        with pytest.raises(ApiError) as info:
            await api.submit(MODEL, INPUTS)
    assert len(str(info.value)) < 700


@pytest.mark.anyio
async def test_validation_failure_keeps_detail_and_names_the_fields() -> None:
    detail = [
        {"loc": ["body", "38_value"], "msg": "must be <= 24", "type": "value_error"},
        {"loc": ["body", "4_valuex3_value"], "msg": "not allowed", "type": "enum"},
    ]
    server = Server(
        ok({"error_code": 422001, "error_message": "invalid input", "detail": detail}, 422)
    )
    async with client(server) as api:
        with pytest.raises(ValidationFailed) as info:
            await api.submit(MODEL, INPUTS)
    assert info.value.detail == detail
    assert info.value.error_code == 422001
    assert info.value.status_code == 422
    assert "38_value" in str(info.value)
    assert "4_valuex3_value" in str(info.value)
    assert "invalid input" in str(info.value)


# -- status ----------------------------------------------------------------------------------

SPELLINGS = {
    "in_queue": RemoteState.QUEUED,
    "pending": RemoteState.QUEUED,
    "waiting": RemoteState.QUEUED,
    "starting": RemoteState.QUEUED,
    "in_progress": RemoteState.RUNNING,
    "processing": RemoteState.RUNNING,
    "completed": RemoteState.COMPLETED,
    "succeeded": RemoteState.SUCCEEDED,
    "failed": RemoteState.FAILED,
    "cancelled": RemoteState.CANCELLED,
    "canceled": RemoteState.CANCELLED,
    "IN_QUEUE": RemoteState.QUEUED,
}


@pytest.mark.anyio
@pytest.mark.parametrize(("spelling", "state"), SPELLINGS.items())
async def test_status_spellings(spelling: str, state: RemoteState) -> None:
    server = Server(ok({"request_id": "r1", "status": spelling}))
    async with client(server) as api:
        status = await api.status("r1")
    assert status.state is state
    assert server.requests[0].url.raw_path == b"/v1/requests/r1/status"


@pytest.mark.anyio
async def test_status_reads_the_queue_position() -> None:
    server = Server(ok({"status": "in_queue", "queue_position": 3}), ok({"status": "in_progress"}))
    async with client(server) as api:
        queued = await api.status("r1")
        running = await api.status("r1")
    assert queued.queue_position == 3
    assert queued.raw["queue_position"] == 3
    assert running.queue_position is None


@pytest.mark.anyio
async def test_unknown_state_is_not_terminal_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(ok({"status": "thinking_hard"}))
    with caplog.at_level(logging.WARNING, logger="comfysweep.client"):
        async with client(server) as api:
            first = await api.status("r1")
            await api.status("r1")
    assert first.state is RemoteState.UNKNOWN
    assert not first.state.terminal
    assert [r.getMessage() for r in caplog.records].count(
        "unknown job state 'thinking_hard' from the Model API: treated as not finished"
    ) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        ok({"error_code": 404001, "error_message": "request not found"}, 404),
        ok({"detail": "Not Found"}, 404),
        ok({"error_code": 404001, "error_message": "request expired"}),
    ],
)
async def test_status_of_an_unknown_request(answer: httpx.Response) -> None:
    server = Server(answer)
    async with client(server) as api:
        with pytest.raises(RequestNotFound):
            await api.status("gone")
    assert server.count == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        html(502),
        ok({"error_code": 500001}, 500),
        ok({}, 503),
        ok({}, 429),
        ok({}, 408),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("dropped"),
        html(200),
        ok("just a string"),
        ok({"no": "status"}),
    ],
)
async def test_reads_retry_transient_failures(failure: Answer) -> None:
    server = Server(failure, failure, ok({"status": "in_progress"}))
    async with client(server) as api:
        status = await api.status("r1")
    assert status.state is RemoteState.RUNNING
    assert server.count == 3


@pytest.mark.anyio
async def test_reads_give_up_with_a_server_error() -> None:
    server = Server(html(502))
    async with client(server) as api:
        with pytest.raises(ServerError) as info:
            await api.status("r1")
    assert info.value.status_code == 502
    assert server.count == ATTEMPTS


@pytest.mark.anyio
async def test_reads_give_up_with_a_transport_error() -> None:
    server = Server(httpx.ReadTimeout("timed out"))
    async with client(server, retry=RetryPolicy(attempts=3, wait=False)) as api:
        with pytest.raises(TransportError) as info:
            await api.status("r1")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert "3 attempts" in str(info.value)
    assert server.count == 3


@pytest.mark.anyio
async def test_refusals_on_reads_are_not_retried() -> None:
    server = Server(ok({"error_code": 400004, "error_message": "expired token"}, 401))
    async with client(server) as api:
        with pytest.raises(AuthError):
            await api.result("r1")
    assert server.count == 1


@pytest.mark.anyio
async def test_request_ids_out_of_bounds_are_never_put_in_a_path() -> None:
    server = Server(ok({"status": "in_queue"}))
    async with client(server) as api:
        await api.status("a.b:c_d-1")
        for bad in ("a/b?c", "x" * 129, "a\nb", ""):
            with pytest.raises(RequestNotFound, match="cannot be asked"):
                await api.status(bad)
    assert [r.url.raw_path for r in server.requests] == [b"/v1/requests/a.b%3Ac_d-1/status"]


# -- result ----------------------------------------------------------------------------------

U1 = "https://playgrounds-storage-public.runcomfy.net/a.mp4"
U2 = "https://playgrounds-storage-public.runcomfy.net/b.png"
U3 = "https://cdn.runcomfy.com/c.wav"


@pytest.mark.parametrize(
    ("output", "urls"),
    [
        (U1, [U1]),
        ([U1, U2], [U1, U2]),
        ({"video": U1}, [U1]),
        ({"image": U2}, [U2]),
        ({"videos": [U1, U2]}, [U1, U2]),
        ({"images": [U2, U1]}, [U2, U1]),
        ({"url": U1}, [U1]),
        ({"path": U1}, [U1]),
        ({"audio": U3}, [U3]),
        ({"extra": {"deep": [{"x": U3}]}, "video": U1}, [U1, U3]),
        ({"video": U1, "videos": [U1, U2], "images": [U2]}, [U1, U2]),
        ({"video": "relative/a.mp4", "note": "hello", "n": 3, "ok": True}, []),
        ([{"video": U1}, {"image": U2}], [U1, U2]),
        (None, []),
        ({"video": f"  {U1}  "}, [U1]),
    ],
)
def test_collect_urls_from_every_shape(output: Any, urls: list[str]) -> None:
    assert collect_urls(output) == urls


def test_collect_urls_survives_a_very_deep_body() -> None:
    deep: Any = U1
    for _ in range(50_000):
        deep = [deep]
    assert collect_urls({"output": deep}) == [U1]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("CUDA out of memory", "CUDA out of memory"),
        ({"type": "OOM", "message": "CUDA out of memory"}, "OOM: CUDA out of memory"),
        ({"message": "boom"}, "boom"),
        ({"type": "Timeout"}, "Timeout"),
        ([{"type": "A", "message": "one"}, {"type": "B", "message": "two"}], "A: one; B: two"),
        ([], None),
        (None, None),
        ("", None),
        (42, "42"),
        ({"code": 7, "where": "sampler"}, '{"code": 7, "where": "sampler"}'),
        ({"type": "", "message": "plain"}, "plain"),
    ],
)
def test_error_message_from_every_shape(error: Any, message: str | None) -> None:
    assert error_message(error) == message


@pytest.mark.anyio
@pytest.mark.parametrize("spelling", ["succeeded", "completed"])
async def test_result_success_collects_urls_and_cost(spelling: str) -> None:
    body = {
        "request_id": "r1",
        "status": spelling,
        "output": {"videos": [U1, U2]},
        "cost": 0.42,
        "created_at": "2026-11-24T10:00:00.123456+00:00",
        "finished_at": "2026-11-24T10:03:12.654321+00:00",
        "model_id": MODEL,
    }
    server = Server(ok(body))
    async with client(server) as api:
        result = await api.result("r1")
    assert result.state is RemoteState.SUCCEEDED
    assert result.urls == [U1, U2]
    assert result.cost == 0.42
    assert result.created_at == body["created_at"]
    assert result.finished_at == body["finished_at"]
    assert result.error is None
    assert result.raw == body
    request = server.requests[0]
    assert request.url.raw_path == b"/v1/requests/r1/result?include_cost=true"


@pytest.mark.anyio
async def test_result_without_cost() -> None:
    server = Server(ok({"status": "succeeded", "output": U1, "cost": "n/a"}))
    async with client(server) as api:
        result = await api.result("r1", include_cost=False)
    assert result.cost is None
    assert server.requests[0].url.query == b""


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("out of memory", "out of memory"),
        ({"type": "ValueError", "message": "bad seed"}, "ValueError: bad seed"),
        ([{"type": "A", "message": "x"}], "A: x"),
        (None, "the job failed (no message given)"),
    ],
)
async def test_result_failed_keeps_the_error_verbatim(error: Any, message: str) -> None:
    server = Server(ok({"status": "failed", "error": error, "error_code": 500001}))
    async with client(server) as api:
        result = await api.result("r1")
    assert result.state is RemoteState.FAILED
    assert result.error == error
    assert result.error_message == message
    assert result.urls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "state"),
    [
        ({"status": "in_queue"}, RemoteState.QUEUED),
        ({"status": "in_progress"}, RemoteState.RUNNING),
        ({"status": "cancelled"}, RemoteState.CANCELLED),
        ({"status": "canceled"}, RemoteState.CANCELLED),
        ({"output": {"video": U1}}, RemoteState.SUCCEEDED),
        ({"error": "boom"}, RemoteState.FAILED),
    ],
)
async def test_result_states(body: dict[str, Any], state: RemoteState) -> None:
    async with client(Server(ok(body))) as api:
        result = await api.result("r1")
    assert result.state is state


@pytest.mark.anyio
async def test_result_of_an_expired_request() -> None:
    server = Server(ok({"error_code": 404001, "error_message": "expired"}, 404))
    async with client(server) as api:
        with pytest.raises(RequestNotFound, match="expired"):
            await api.result("r1")


# -- cancel and catalog ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "cancelled"),
    [
        ({"request_id": "r1", "status": "cancelled", "outcome": "cancelled"}, True),
        ({"request_id": "r1", "outcome": "cancelled"}, True),
        ({"request_id": "r1", "status": "cancelled"}, True),
        ({"request_id": "r1", "status": "cancellation_requested"}, True),
        ({"request_id": "r1", "status": "in_progress", "outcome": "not_cancellable"}, False),
        ({"request_id": "r1", "status": "not_cancellable"}, False),
        ({}, False),
    ],
)
async def test_cancel_outcomes(body: dict[str, Any], cancelled: bool) -> None:
    server = Server(ok(body))
    async with client(server) as api:
        outcome = await api.cancel("r1")
    assert outcome.cancelled is cancelled
    assert server.requests[0].method == "POST"
    assert server.requests[0].url.raw_path == b"/v1/requests/r1/cancel"


@pytest.mark.anyio
async def test_cancel_of_an_unknown_request() -> None:
    server = Server(ok({"error_code": 404001}, 404))
    async with client(server) as api:
        with pytest.raises(RequestNotFound):
            await api.cancel("r1")


@pytest.mark.anyio
async def test_catalog_entry() -> None:
    body = {"model_id": MODEL, "base_price_usd": 0.12, "price_unit": "second", "kind": "model"}
    server = Server(ok(body))
    async with client(server) as api:
        info = await api.model(MODEL)
    assert (info.model_id, info.base_price_usd, info.price_unit) == (MODEL, 0.12, "second")
    assert server.requests[0].method == "GET"
    assert server.requests[0].url.raw_path == f"/v1/models/{MODEL}".encode()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer", [ok({"detail": "Not Found"}, 404), ok({"error_code": 400001}, 400), html(404)]
)
async def test_catalog_of_an_unknown_model(answer: httpx.Response) -> None:
    async with client(Server(answer)) as api:
        with pytest.raises(ModelNotFound):
            await api.model("nobody/nothing")


# -- downloads -------------------------------------------------------------------------------

VIDEO = bytes(range(256)) * 1000


def media(content: bytes = VIDEO, **headers: str) -> httpx.Response:
    return httpx.Response(200, content=content, headers={"content-type": "video/mp4", **headers})


class Chunks(httpx.AsyncByteStream):
    """A streamed body that can fail after its chunks (a dropped connection)."""

    def __init__(self, chunks: Iterable[bytes], error: Exception | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error


@pytest.mark.anyio
async def test_download_streams_hashes_and_sends_no_token(tmp_path: Path) -> None:
    server = Server(media())
    dest = tmp_path / "out.mp4.part"
    async with client(server) as api:
        done = await api.download(CDN, dest)
    assert dest.read_bytes() == VIDEO
    assert done.path == dest
    assert done.size == len(VIDEO)
    assert done.sha256 == hashlib.sha256(VIDEO).hexdigest()
    assert done.content_type == "video/mp4"
    assert "authorization" not in server.requests[0].headers
    assert str(server.requests[0].url) == CDN


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.runcomfy.com/x.mp4",
        "https://runcomfy.net/x.mp4",
        "https://model-api.runcomfy.net/media/x.mp4",
    ],
)
async def test_download_allowed_hosts(tmp_path: Path, url: str) -> None:
    async with client(Server(media(b"ok"))) as api:
        done = await api.download(url, tmp_path / "f")
    assert done.size == 2


@pytest.mark.anyio
async def test_download_from_the_api_host_over_http(tmp_path: Path) -> None:
    server = Server(media(b"ok"))
    transport = httpx.MockTransport(server)
    async with ModelApiClient(
        "http://127.0.0.1:8123/v1", TOKEN, transport=transport, retry=RetryPolicy(wait=False)
    ) as api:
        done = await api.download("http://127.0.0.1:8123/media/a.mp4", tmp_path / "f")
    assert done.size == 2
    assert "authorization" not in server.requests[0].headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://playgrounds-storage-public.runcomfy.net/a.mp4",
        "https://evil.example.com/a.mp4",
        "https://runcomfy.net.evil.com/a.mp4",
        "https://notrunComfy.net/a.mp4",
        "file:///etc/passwd",
        "http://127.0.0.1:8123/a.mp4",
        "https://cdn.runcomfy.net:8443/a.mp4",
        "https://model-api.runcomfy.net:8443/v1/a.mp4",
        "http://model-api.runcomfy.net/v1/a.mp4",
        "not a url at all",
        "http://[::1",
        "https://",
    ],
)
async def test_download_refuses_other_hosts(tmp_path: Path, url: str) -> None:
    server = Server(media())
    async with client(server) as api:
        with pytest.raises(DownloadError, match="download of"):
            await api.download(url, tmp_path / "f")
    assert server.count == 0
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("base", "url", "allowed"),
    [
        ("http://127.0.0.1:8123/v1", "http://127.0.0.1:8123/o/a.mp4", True),
        ("http://localhost:8123/v1", "http://localhost:8123/o/a.mp4", True),
        ("http://[::1]:8123/v1", "http://[::1]:8123/o/a.mp4", True),
        ("http://127.0.0.1:8123/v1", "http://127.0.0.1:8124/o/a.mp4", False),
        ("http://127.0.0.1:8123/v1", "https://127.0.0.1:8123/o/a.mp4", False),
        ("http://api.example.com/v1", "http://api.example.com/o/a.mp4", False),
        ("https://api.example.com/v1", "https://api.example.com/o/a.mp4", True),
        ("https://api.example.com/v1", "https://api.example.com:443/o/a.mp4", True),
        ("https://api.example.com:8443/v1", "https://api.example.com/o/a.mp4", False),
        ("https://api.example.com/v1", "https://cdn.runcomfy.com/a.mp4", True),
        ("https://api.example.com/v1", "https://cdn.runcomfy.com:443/a.mp4", True),
        ("https://api.example.com/v1", "https://cdn.runcomfy.com:444/a.mp4", False),
        ("http://127.0.0.1:8123/v1", "http://cdn.runcomfy.com/a.mp4", False),
    ],
)
def test_downloads_come_only_from_the_api_origin_or_runcomfy_media_over_https(
    base: str, url: str, allowed: bool
) -> None:
    assert download_allowed(httpx.URL(url), httpx.URL(base)) is allowed


@pytest.mark.anyio
async def test_a_download_refused_says_the_port_and_the_allowed_origin(tmp_path: Path) -> None:
    server = Server(media())
    async with ModelApiClient(
        "http://127.0.0.1:8123/v1", TOKEN, transport=httpx.MockTransport(server)
    ) as api:
        with pytest.raises(DownloadError, match=r"127\.0\.0\.1:9999 over http") as info:
            await api.download("http://127.0.0.1:9999/o/a.mp4", tmp_path / "f")
    assert "http://127.0.0.1:8123" in str(info.value)
    assert server.count == 0


@pytest.mark.anyio
async def test_download_follows_redirects_to_allowed_hosts(tmp_path: Path) -> None:
    other = "https://cdn.runcomfy.com/real.mp4"
    server = Server(httpx.Response(302, headers={"location": other}), media())
    async with client(server) as api:
        done = await api.download(CDN, tmp_path / "f")
    assert done.size == len(VIDEO)
    assert [str(r.url) for r in server.requests] == [CDN, other]
    assert all("authorization" not in r.headers for r in server.requests)


@pytest.mark.anyio
async def test_download_refuses_a_redirect_elsewhere(tmp_path: Path) -> None:
    server = Server(httpx.Response(302, headers={"location": "https://evil.example/x"}), media())
    async with client(server) as api:
        with pytest.raises(DownloadError, match=r"redirect to evil\.example"):
            await api.download(CDN, tmp_path / "f")
    assert server.count == 1
    assert not (tmp_path / "f").exists()


@pytest.mark.anyio
async def test_download_redirect_loop(tmp_path: Path) -> None:
    server = Server(httpx.Response(302, headers={"location": CDN}))
    async with client(server) as api:
        with pytest.raises(DownloadError, match="redirects"):
            await api.download(CDN, tmp_path / "f")


@pytest.mark.anyio
@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_output(tmp_path: Path, status: int) -> None:
    server = Server(httpx.Response(status, text="<Error>AccessDenied</Error>"))
    async with client(server) as api:
        with pytest.raises(OutputExpired, match=f"HTTP {status}"):
            await api.download(CDN, tmp_path / "f")
    assert server.count == 1
    assert not (tmp_path / "f").exists()


@pytest.mark.anyio
async def test_short_body_is_retried(tmp_path: Path) -> None:
    short = media(VIDEO[:1000], **{"content-length": str(len(VIDEO))})
    server = Server(short, media())
    async with client(server) as api:
        done = await api.download(CDN, tmp_path / "f")
    assert done.size == len(VIDEO)
    assert (tmp_path / "f").read_bytes() == VIDEO
    assert server.count == 2


@pytest.mark.anyio
async def test_short_body_forever_is_a_download_error_and_leaves_no_file(tmp_path: Path) -> None:
    server = Server(media(VIDEO[:1000], **{"content-length": str(len(VIDEO))}))
    async with client(server) as api:
        with pytest.raises(DownloadError, match=f"1000 of {len(VIDEO)} bytes"):
            await api.download(CDN, tmp_path / "f")
    assert server.count == ATTEMPTS
    assert not (tmp_path / "f").exists()


@pytest.mark.anyio
async def test_dropped_download_is_retried_then_removed(tmp_path: Path) -> None:
    def dropped(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([b"x" * 5000], httpx.ReadError("reset")))

    server = Server(dropped)
    async with client(server, retry=RetryPolicy(attempts=3, wait=False)) as api:
        with pytest.raises(DownloadError, match="ReadError") as info:
            await api.download(CDN, tmp_path / "f")
    assert not isinstance(info.value, OutputExpired)
    assert server.count == 3
    assert not (tmp_path / "f").exists()


@pytest.mark.anyio
async def test_download_5xx_is_retried(tmp_path: Path) -> None:
    server = Server(html(502), ok({}, 429, **{"Retry-After": "1"}), media())
    async with client(server) as api:
        done = await api.download(CDN, tmp_path / "f")
    assert done.size == len(VIDEO)
    assert server.count == 3


@pytest.mark.anyio
async def test_download_over_the_limit_by_content_length(tmp_path: Path) -> None:
    server = Server(media())
    async with client(server, max_download_bytes=1000) as api:
        with pytest.raises(DownloadError, match="1000-byte limit"):
            await api.download(CDN, tmp_path / "f")
    assert server.count == 1
    assert not (tmp_path / "f").exists()


@pytest.mark.anyio
async def test_download_over_the_limit_while_streaming(tmp_path: Path) -> None:
    def endless(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([b"y" * 600] * 5))

    server = Server(endless)
    async with client(server, max_download_bytes=1000) as api:
        with pytest.raises(DownloadError, match="1000-byte limit"):
            await api.download(CDN, tmp_path / "f")
    assert server.count == 1
    assert not (tmp_path / "f").exists()


@pytest.mark.anyio
async def test_download_into_a_missing_folder_names_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "missing" / "f"
    async with client(Server(media())) as api:
        with pytest.raises(DownloadError, match="cannot write"):
            await api.download(CDN, dest)


@pytest.mark.anyio
async def test_download_other_client_errors_are_not_retried(tmp_path: Path) -> None:
    server = Server(httpx.Response(400, text="bad"))
    async with client(server) as api:
        with pytest.raises(DownloadError, match="HTTP 400"):
            await api.download(CDN, tmp_path / "f")
    assert server.count == 1


# -- the token never leaks -------------------------------------------------------------------


async def _call(api: ModelApiClient, call: str, tmp_path: Path) -> object:
    if call == "submit":
        return await api.submit(MODEL, INPUTS)
    if call == "download":
        return await api.download(CDN, tmp_path / "f")
    if call == "model":
        return await api.model(MODEL)
    return await getattr(api, call)("r1")


LEAKY = {"error_code": 400004, "error_message": f"token {TOKEN} is expired"}


@pytest.mark.anyio
async def test_token_never_appears_in_repr_messages_or_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", TOKEN)
    scenarios: list[tuple[str, Answer]] = [
        ("submit", ok(LEAKY, 401)),
        ("submit", httpx.ConnectError("refused")),
        ("submit", httpx.ReadTimeout("timed out")),
        ("submit", ok({"error_message": TOKEN}, 500)),
        ("submit", ok({"error_code": 422001, "detail": [{"loc": [TOKEN]}]}, 422)),
        ("submit", html(429)),
        ("status", html(502)),
        ("status", httpx.ReadTimeout("timed out")),
        ("status", ok({"error_code": 404001, "message": TOKEN}, 404)),
        ("result", ok({"error_code": 402, "message": TOKEN}, 402)),
        ("cancel", ok({"message": TOKEN}, 403)),
        ("model", ok({"detail": TOKEN}, 404)),
        ("download", httpx.Response(410)),
        ("download", html(502)),
    ]
    raised: list[ComfysweepError] = []
    with caplog.at_level(logging.DEBUG):
        for call, answer in scenarios:
            server = Server(answer)
            async with ModelApiClient(
                BASE, transport=httpx.MockTransport(server), retry=RetryPolicy(wait=False)
            ) as api:
                assert TOKEN not in repr(api)
                with pytest.raises(ComfysweepError) as info:
                    await _call(api, call, tmp_path)
                raised.append(info.value)
            sent = server.requests[0].headers.get("authorization")
            assert sent == (None if call == "download" else f"Bearer {TOKEN}")
    assert len(raised) == len(scenarios)
    for exc in raised:
        assert TOKEN not in str(exc)
        assert TOKEN not in repr(exc)
        assert TOKEN not in repr(exc.context)
    assert TOKEN not in caplog.text


@pytest.mark.anyio
async def test_failed_result_message_is_scrubbed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(ok({"status": "failed", "error": f"bad auth {TOKEN}"}))
    async with client(server) as api:
        result = await api.result("r1")
    assert result.error_message == "bad auth ***"


@pytest.mark.anyio
async def test_every_call_carries_all_four_timeouts(tmp_path: Path) -> None:
    server = Server(lambda r: media() if r.url.host.startswith("play") else ok(SUBMITTED))
    async with client(server, timeout=12.0) as api:
        await api.submit(MODEL, INPUTS)
        await api.download(CDN, tmp_path / "f")
    for request in server.requests:
        assert request.extensions["timeout"] == {
            "connect": 10.0,
            "read": 12.0,
            "write": 12.0,
            "pool": 12.0,
        }


HUGE = MAX_ANSWER_BYTES + 1


@pytest.mark.anyio
async def test_a_huge_answer_to_a_submit_is_unknown_and_not_resent() -> None:
    server = Server(httpx.Response(200, content=b"{" + b" " * HUGE + b"}"))
    async with client(server) as api:
        with pytest.raises(OutcomeUnknown, match="larger than 16 MiB"):
            await api.submit(MODEL, INPUTS)
    assert server.count == 1


@pytest.mark.anyio
async def test_a_compressed_bomb_is_read_no_further_than_the_cap() -> None:
    bomb = gzip.compress(b" " * (HUGE * 2))
    answer = httpx.Response(200, content=bomb, headers={"content-encoding": "gzip"})
    server = Server(answer)
    async with client(server) as api:
        with pytest.raises(ServerError, match="larger than 16 MiB"):
            await api.status("r-1")


@pytest.mark.anyio
async def test_a_compressed_answer_within_the_cap_is_decoded_once() -> None:
    body = json.dumps({"request_id": "r-1", "status": "in_queue", "queue_position": 2}).encode()
    answer = httpx.Response(200, content=gzip.compress(body), headers={"content-encoding": "gzip"})
    async with client(Server(answer)) as api:
        status = await api.status("r-1")
    assert status.queue_position == 2


# -- every value read is bounded ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("rid", "why"),
    [
        ("x" * (MAX_REQUEST_ID + 1), f"of {MAX_REQUEST_ID + 1} characters"),
        ("x" * 65536, "of 65536 characters"),
        ("r1\n2026-01-01 INFO forged", "characters outside"),
        ("a/b", "characters outside"),
        ("a b", "characters outside"),
        ("", "empty request id"),
        (None, "without a request id"),
        (True, "a JSON bool"),
        ({"id": 1}, "a JSON dict"),
    ],
)
async def test_a_submit_answered_with_a_request_id_out_of_bounds_is_unknown_never_resent(
    rid: Any, why: str
) -> None:
    server = Server(ok({"request_id": rid}))
    async with client(server) as api:
        with pytest.raises(OutcomeUnknown, match="may exist and be billed") as info:
            await api.submit(MODEL, INPUTS)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 500
    assert server.count == 1


@pytest.mark.anyio
@pytest.mark.parametrize("rid", ["r-1", "6f1c_ABC.9:x", "x" * MAX_REQUEST_ID, 12345])
async def test_request_ids_within_bounds_are_accepted(rid: Any) -> None:
    async with client(Server(ok({"request_id": rid}))) as api:
        submitted = await api.submit(MODEL, INPUTS)
    assert submitted.request_id == str(rid)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "cost"),
    [
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": NaN}', None),
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": Infinity}', None),
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": -Infinity}', None),
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": 1e999}', None),
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": "inf"}', None),
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": -0.5}', None),
        (b'{"status": "succeeded", "output": {"video": "%s"}, "cost": 0.5, "x": NaN}', 0.5),
    ],
)
async def test_non_finite_numbers_are_read_as_null_and_noted(
    raw: bytes, cost: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    body = raw.replace(b"%s", CDN.encode())
    async with client(Server(httpx.Response(200, content=body))) as api:
        result = await api.result("r-1")
    assert result.state is RemoteState.SUCCEEDED
    assert result.urls == [CDN]
    assert result.cost == cost
    json.dumps(result.raw, allow_nan=False)  # nothing non-finite is kept
    if b"NaN" in raw or b"Infinity" in raw or b"1e999" in raw:
        assert "non-finite" in caplog.text


@pytest.mark.anyio
async def test_non_finite_numbers_in_a_status_or_the_catalog_are_null() -> None:
    answers = [
        httpx.Response(200, content=b'{"status": "in_queue", "queue_position": NaN}'),
        httpx.Response(200, content=b'{"model_id": "m", "base_price_usd": Infinity}'),
    ]
    async with client(Server(*answers)) as api:
        status = await api.status("r-1")
        info = await api.model(MODEL)
    assert status.queue_position is None
    assert info.base_price_usd is None


@pytest.mark.anyio
async def test_a_result_with_more_urls_than_the_cap_is_a_failure_naming_both() -> None:
    urls = [f"https://cdn.runcomfy.net/{n}.mp4" for n in range(2000)]
    server = Server(ok({"status": "succeeded", "output": {"videos": urls}, "cost": 1.0}))
    async with client(server) as api:
        result = await api.result("r-1")
    assert result.state is RemoteState.FAILED
    assert result.urls == []
    assert result.cost == 1.0
    assert result.error_message is not None
    assert f"lists 2000 output URLs, more than the cap of {MAX_URLS}" in result.error_message


@pytest.mark.anyio
async def test_a_result_with_urls_up_to_the_cap_is_a_success() -> None:
    urls = [f"https://cdn.runcomfy.net/{n}.mp4" for n in range(MAX_URLS)]
    async with client(Server(ok({"status": "succeeded", "output": urls}))) as api:
        result = await api.result("r-1")
    assert result.state is RemoteState.SUCCEEDED
    assert result.urls == urls


# -- headers are scrubbed as well as bodies ------------------------------------------------------


@pytest.mark.anyio
async def test_a_token_in_a_content_type_never_reaches_a_message_or_a_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answer = httpx.Response(200, content=b"<html>", headers={"content-type": f"text/{TOKEN}"})
    with caplog.at_level(logging.DEBUG):
        async with client(Server(answer), retry=RetryPolicy(wait=False, attempts=2)) as api:
            with pytest.raises(ServerError, match="unreadable answer") as info:
                await api.status("r-1")
    assert TOKEN not in str(info.value)
    assert "text/***" in str(info.value)
    assert TOKEN not in caplog.text
    assert "text/***" in caplog.text  # the retry's log line, scrubbed too


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["submit", "status", "download"])
async def test_a_token_in_a_transport_error_is_scrubbed_along_the_whole_chain(
    call: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    error = httpx.RemoteProtocolError(f"illegal header line: bytearray(b'Bearer {TOKEN}\nX')")
    with caplog.at_level(logging.DEBUG):
        async with client(Server(error), retry=RetryPolicy(wait=False, attempts=2)) as api:
            with pytest.raises(ComfysweepError) as info:
                await _call(api, call, tmp_path)
    chain: list[BaseException] = []
    current: BaseException | None = info.value
    while current is not None:
        chain.append(current)
        current = current.__cause__
    assert len(chain) >= 2  # the cause is kept, scrubbed
    for exc in chain:
        assert TOKEN not in str(exc)
        assert "\n" not in str(exc)
    assert TOKEN not in caplog.text


def test_an_unknown_state_of_megabytes_is_logged_short(caplog: pytest.LogCaptureFixture) -> None:
    from orchestrator.responses import remote_state

    spelling = "s" * 1_000_000 + "\n2026-01-01 forged line"
    with caplog.at_level(logging.WARNING):
        assert remote_state(spelling) is RemoteState.UNKNOWN
    [line] = [r.getMessage() for r in caplog.records if "unknown job state" in r.getMessage()]
    assert len(line) < 200, len(line)
    assert "\n" not in line
