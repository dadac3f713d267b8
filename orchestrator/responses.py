"""Pure parsing of the Model API's answers: states, URLs, messages, and the bounds on each value.

Liberal in what it reads (every state spelling, every output shape, any error shape) and strict
about what it lets through: request ids are short and of a safe alphabet, numbers are finite, a
result names a bounded number of URLs, and no text keeps the token or a control character. No
HTTP here: the client hands in bytes and dicts.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

__all__ = [
    "BASE_VAR",
    "DEFAULT_BASE",
    "DEFAULT_HTTP_TRANSPORT",
    "DEFAULT_TIMEOUT",
    "HTTP_TRANSPORTS",
    "MAX_REQUEST_ID",
    "MAX_URLS",
    "CancelOutcome",
    "HttpTransport",
    "ModelInfo",
    "RemoteState",
    "Result",
    "Status",
    "Submitted",
    "clean_body",
    "collect_urls",
    "error_message",
    "parse_json_object",
    "remote_state",
    "scrub",
    "valid_request_id",
]

log = logging.getLogger("comfysweep.client")

# RunComfy's request ids are [A-Za-z0-9_-]{1,128}; "." and ":" are let in too. Anything else (a
# slash, a space, a newline, 64 KiB) would end up in URLs, file names and log lines.
MAX_REQUEST_ID = 128
# Seconds to wait for each answer; `comfysweep run --timeout` overrides it. Here, not in the
# client: the run settings declare it without importing the HTTP stack.
DEFAULT_TIMEOUT = 30.0
# Where the Model API is, and the variable that moves it (the emulator, a proxy).
DEFAULT_BASE = "https://model-api.runcomfy.net/v1"
BASE_VAR = "RUNCOMFY_MODEL_API_BASE"
# What moves the bytes under httpx's API: aiohttp (orchestrator/transport.py), or httpx's own
# transport (httpcore); `comfysweep run --http-transport` chooses.
HttpTransport = Literal["httpx", "aiohttp"]
HTTP_TRANSPORTS: tuple[str, ...] = get_args(HttpTransport)
DEFAULT_HTTP_TRANSPORT: HttpTransport = "aiohttp"  # benchmarks/transports.py: less CPU per job
_MAX_DIGITS = 300  # a JSON integer longer than this is read as null, like 1e999
_REQUEST_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_REQUEST_ID}}}")
# A video model returns a handful of files; thousands of URLs are a broken or hostile server, and
# each would be one download.
MAX_URLS = 64
# The Model API answers "cancelled"; the serverless API "cancellation_requested".
CANCEL_ACCEPTED = frozenset({"cancelled", "canceled", "cancellation_requested"})
MAX_MESSAGE = 2000  # characters of a job's error message kept: it goes to run.log on one line
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


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
_SHOWN_STATE = 40


def remote_state(spelling: str, *, result: bool = False) -> RemoteState:
    """Map a ``status`` string; on the result endpoint ``completed`` means success."""
    state = _SPELLINGS.get(spelling.strip().lower(), RemoteState.UNKNOWN)
    shown = spelling[:_SHOWN_STATE]  # a hostile server's 16 MiB status is neither kept nor logged
    if state is RemoteState.UNKNOWN and shown not in _unknown_seen and len(_unknown_seen) < 100:
        _unknown_seen.add(shown)
        more = f" (+{len(spelling) - len(shown)} characters)" if shown != spelling else ""
        log.warning(
            "unknown job state %r%s from the Model API: treated as not finished", shown, more
        )
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


# -- reading bodies ----------------------------------------------------------------------------


def parse_json_object(content: bytes) -> tuple[dict[str, Any] | None, int]:
    """The body as a JSON object (None for anything else) and how many non-finite numbers it held.

    ``NaN``, ``Infinity`` and numbers too big for a float (``1e999``, 400 digits) are read as null:
    nothing downstream (arithmetic, the store, the manifest) has to cope with them.
    """
    nonfinite = 0

    def finite(value: float) -> float | None:
        nonlocal nonfinite
        if math.isfinite(value):
            return value
        nonfinite += 1
        return None

    def whole(text: str) -> int | None:
        # Python refuses to read an integer of over 4,300 digits: one would make the whole
        # answer unreadable, and its job stuck. No count or amount is that big: null.
        if len(text.lstrip("-")) <= _MAX_DIGITS:
            return int(text)
        nonlocal nonfinite
        nonfinite += 1
        return None

    def constant(name: str) -> None:
        nonlocal nonfinite
        nonfinite += 1

    try:
        body = json.loads(
            content,
            parse_constant=constant,
            parse_float=lambda text: finite(float(text)),
            parse_int=whole,
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, nonfinite
    return (body if isinstance(body, dict) else None), nonfinite


def error_code(body: dict[str, Any] | None) -> int | None:
    """The body's ``error_code`` as an int; 0 and unreadable values count as none."""
    code = body.get("error_code") if body else None
    if isinstance(code, str) and code.strip().isdigit() and len(code) < 12:
        code = int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) and code else None


def code_class(code: int) -> int:
    """The HTTP status a code stands for: 400004 -> 400; the serverless 1000x codes -> 400."""
    return code // 1000 if code >= 100000 else 400


def text(value: Any) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def number(value: Any) -> float | None:
    """A finite, non-negative amount (a cost, a price); anything else is None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = float(value)
    except (ValueError, OverflowError):
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


def integer(value: Any) -> int | None:
    """An int, or a short string of digits; anything else is None."""
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 12:
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def valid_request_id(value: Any) -> str | None:
    """A usable request id (an integer is sent as text), or None when it is out of bounds."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    # Dots alone are a path step: `requests/../status` would ask about another resource.
    if isinstance(value, str) and _REQUEST_ID.fullmatch(value.strip()) and value.strip(". "):
        return value.strip()
    return None


def unusable_id(value: Any) -> str:
    """Why ``value`` is no request id, without repeating it (it may be huge or forge a line)."""
    if value is None:
        return "without a request id"
    if not isinstance(value, str):
        return f"with a request id that is a JSON {type(value).__name__}, not a string"
    if not value.strip():
        return "with an empty request id"
    if len(value) > MAX_REQUEST_ID:
        return f"with a request id of {len(value)} characters (at most {MAX_REQUEST_ID})"
    if not value.strip(". "):
        return "with a request id of dots only"
    return "with a request id holding characters outside A-Z a-z 0-9 _ - . :"


# -- output URLs and error messages ------------------------------------------------------------

_URL_KEYS = ("video", "videos", "image", "images", "url", "path", "audio")


MAX_URL_LENGTH = 8192


def _unfetchable(url: str) -> bool:
    return len(url) > MAX_URL_LENGTH or any(c.isspace() or not c.isprintable() for c in url)


def collect_urls(output: Any) -> list[str]:
    """Every http(s) URL in an ``output`` of any shape, well-known keys first, deduplicated."""
    found: list[str] = []
    stack = [output]  # depth-first without recursion: a deeply nested body cannot crash us
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            url = value.strip()
            if url.lower().startswith(("http://", "https://")):
                found.append(url)
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
        found = next((m for m in said if m), None)
        kind = error.get("type") if isinstance(error.get("type"), str) else None
        if kind and found:
            return f"{kind}: {found}"
        return found or kind or json.dumps(error, default=str)[:300]
    return str(error)


def fields(detail: Any) -> list[str]:
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


# -- the answers ---------------------------------------------------------------------------------


def parse_status(rid: str, body: dict[str, Any]) -> Status:
    """A status answer (``COMPLETED`` means: ask ``result``)."""
    return Status(
        request_id=rid,
        state=remote_state(text(body.get("status")) or ""),
        queue_position=integer(body.get("queue_position")),
        raw=body,
    )


def parse_result(rid: str, body: dict[str, Any], secret: str) -> Result:
    """A result answer; a success naming over MAX_URLS outputs is a failure: none is fetched."""
    spelling = text(body.get("status"))
    if spelling is not None:
        state = remote_state(spelling, result=True)
    else:
        state = RemoteState.SUCCEEDED if body.get("output") is not None else RemoteState.FAILED
    error = body.get("error")
    message = error_message(error)
    if state is RemoteState.FAILED and message is None:
        message = error_message(body.get("error_message")) or "the job failed (no message given)"
    urls = collect_urls(body.get("output"))
    if len(urls) > MAX_URLS:
        message = (
            f"the result lists {len(urls)} output URLs, more than the cap of {MAX_URLS}: "
            "nothing was downloaded"
        )
        state, urls, error = RemoteState.FAILED, [], message
    elif state is RemoteState.SUCCEEDED and any(map(_unfetchable, urls)):
        # It would be refused on every run, the paid job `succeeded` for ever: say so once.
        message = (
            "the result lists an output URL that cannot be fetched (control characters, spaces "
            f"or over {MAX_URL_LENGTH} characters): nothing was downloaded"
        )
        state, urls, error = RemoteState.FAILED, [], message
    return Result(
        request_id=rid,
        state=state,
        urls=urls,
        error=error,
        error_message=scrub(message, secret)[:MAX_MESSAGE] if message else None,
        cost=number(body.get("cost")),
        created_at=text(body.get("created_at")),
        finished_at=text(body.get("finished_at")),
        raw=body,
    )


def parse_cancel(body: dict[str, Any]) -> CancelOutcome:
    """A cancel answer: cancelled, or not (a running job is billed anyway)."""
    outcome = (text(body.get("outcome")) or "").lower()
    status = (text(body.get("status")) or "").lower()
    done = outcome == "cancelled" or status in CANCEL_ACCEPTED
    return CancelOutcome(cancelled=done and outcome != "not_cancellable", raw=body)


def parse_model(model_id: str, body: dict[str, Any]) -> ModelInfo:
    """A catalog entry."""
    return ModelInfo(
        model_id=text(body.get("model_id")) or model_id,
        base_price_usd=number(body.get("base_price_usd")),
        price_unit=text(body.get("price_unit")),
        raw=body,
    )


def has_status(body: dict[str, Any]) -> bool:
    """The answer says a state."""
    return text(body.get("status")) is not None


def has_outcome(body: dict[str, Any]) -> bool:
    """The answer says a state, an output or an error."""
    return has_status(body) or body.get("output") is not None or body.get("error") is not None


# -- keeping secrets and lines out of text -------------------------------------------------------


def scrub(message: str, secret: str) -> str:
    """``message`` without ``secret`` and on one line: it goes to run.log, the store, stderr."""
    if secret:
        message = message.replace(secret, "***")
    return _CONTROL.sub(" ", message)


def clean_body(body: dict[str, Any] | None, secret: str) -> dict[str, Any] | None:
    """A body with ``secret`` replaced wherever a server echoed it: bodies get stored."""
    if body is None or not secret:
        return body
    escaped = json.dumps(secret)[1:-1]
    try:
        dumped = json.dumps(body)
        if escaped not in dumped:
            return body
        clean = json.loads(dumped.replace(escaped, "***"))
    except (ValueError, RecursionError):
        return None  # a body we cannot check is a body we do not keep
    return clean if isinstance(clean, dict) else None
