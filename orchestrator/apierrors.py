"""The Model API's error answers mapped to comfysweep's exceptions: one table, read top to bottom.

An answer is matched by its ``error_code`` first (a 200 may carry one), then by its HTTP status;
the first rule that matches decides the exception and the hint added to its message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import (
    ApiError,
    AuthError,
    BalanceError,
    ModelNotFound,
    RequestNotFound,
    ServerError,
    ValidationFailed,
)
from orchestrator.responses import error_code, error_message, fields

__all__ = ["TOKEN_VARS", "ErrorAnswer", "api_error"]

TOKEN_VARS = ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN")
AUTH_CODES = frozenset({400004, 401001})
BALANCE_CODES = frozenset({400002, 10003})
RETRY_STATUSES = frozenset({408, 429})
_SERVER_STATUSES = frozenset(range(500, 1000)) | RETRY_STATUSES
_MESSAGE_KEYS = ("error_message", "message", "error", "detail")


@dataclass(frozen=True)
class ErrorAnswer:
    """An error answer as the mapping sees it."""

    http_status: int  # as sent
    status: int  # the HTTP class it stands for (a 200 with error_code 500001 stands for 500)
    body: dict[str, Any] | None
    reason: str  # the HTTP reason phrase
    retry_after: float | None
    submit: bool = False  # the answer to a submit
    model: bool = False  # the answer to a catalog read

    @property
    def code(self) -> int | None:
        return error_code(self.body)


def _always(answer: ErrorAnswer) -> bool:
    return True


def _unknown_model(answer: ErrorAnswer) -> bool:
    """A bare 404 to a submit or a catalog read: the model id is wrong."""
    return answer.code is None and (answer.submit or answer.model)


def _unknown_id(answer: ErrorAnswer) -> bool:
    """A bare 404 with a JSON body to a status, result or cancel: the request id is gone."""
    return answer.code is None and answer.body is not None and not answer.submit


def _fields_hint(answer: ErrorAnswer) -> str:
    names = fields(answer.body.get("detail") if answer.body else None)
    return f"; fields: {', '.join(names)}" if names else ""


@dataclass(frozen=True)
class Rule:
    """``kind`` when the code is in ``codes``, or the status in ``statuses`` and ``bare`` holds."""

    kind: type[ApiError]
    codes: frozenset[int]
    statuses: frozenset[int]
    bare: Callable[[ErrorAnswer], bool] = _always
    hint: Callable[[ErrorAnswer], str] | str = ""

    def matches(self, answer: ErrorAnswer) -> bool:
        if answer.code in self.codes:
            return True
        return answer.status in self.statuses and self.bare(answer)


RULES: tuple[Rule, ...] = (
    Rule(AuthError, AUTH_CODES, frozenset({401}), hint=f"; check {TOKEN_VARS[0]}"),
    Rule(BalanceError, BALANCE_CODES, frozenset({402}), hint="; top up your RunComfy balance"),
    Rule(ModelNotFound, frozenset({400001}), frozenset({404}), _unknown_model),
    Rule(ValidationFailed, frozenset({422001}), frozenset({422}), hint=_fields_hint),
    Rule(RequestNotFound, frozenset({404001}), frozenset({404}), _unknown_id),
    Rule(ServerError, frozenset(), _SERVER_STATUSES),
)


def api_error(answer: ErrorAnswer, what: str, scrub: Callable[[str], str]) -> ApiError:
    """The exception an error answer stands for, its message scrubbed by ``scrub``."""
    rule = next((r for r in RULES if r.matches(answer)), None)
    kind = rule.kind if rule else ApiError
    hint = "" if rule is None else rule.hint if isinstance(rule.hint, str) else rule.hint(answer)
    body = answer.body or {}
    said = next((m for k in _MESSAGE_KEYS if (m := error_message(body.get(k)))), None)
    said = (said or answer.reason or "no readable message")[:500]
    code = answer.code
    where = f"HTTP {answer.http_status}" + (f", error_code {code}" if code else "")
    return kind(
        scrub(f"{what}: {said} ({where}){hint}"),
        # a 5xx-class code in a 200 is a server error too, with the status it stands for
        status_code=answer.status if kind is ServerError else answer.http_status,
        error_code=code,
        detail=body.get("detail"),
        retry_after=answer.retry_after,
    )
