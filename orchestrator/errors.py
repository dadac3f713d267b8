"""The exceptions comfysweep raises on purpose.

    ComfysweepError            a mistake or condition the user can act on; the CLI prints one line
    ├── SpecError              the sweep spec (or a file it names) is invalid
    │   └── InputError         an input value does not fit the model's schema
    ├── StoreError             the job store cannot be opened, migrated or written
    │   ├── StoreLockedError   another runner holds the store
    │   ├── StoreBusyError     another program holds the database for now (a write may wait)
    │   └── TransitionError    a job state change that the state machine forbids
    ├── ApiError               the Model API answered with an error
    │   ├── AuthError          bad or expired token (400004, 401001)
    │   ├── BalanceError       no balance left (400002, 402)
    │   ├── ModelNotFound      unknown model id (400001)
    │   ├── ValidationFailed   the input does not match the model's schema (422001)
    │   ├── RequestNotFound    unknown, deleted or expired request id (404001)
    │   └── ServerError        5xx, 429 and 408 after the retries ran out
    ├── TransportError         the API could not be reached (connect errors, timeouts)
    │   └── OutcomeUnknown     a submit was sent, but its answer was lost
    ├── DownloadError          an output could not be fetched or verified
    │   ├── OutputExpired      an output URL is gone (403, 404, 410)
    │   └── OutputInvalid      a downloaded file is cut short, unreadable or not the shape asked for
    ├── ResultsError           the results folder cannot be used as it is
    ├── ExportError            an export cannot be written (DEST not empty, files missing)
    ├── DefaultsChanged        new jobs differ from paid ones only in a changed schema default
    └── EmulatorError          the embedded emulator cannot start (port in use, bad fault profile)

Every class's docstring is its default message. Causes are chained with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class ComfysweepError(Exception):
    """comfysweep failed."""

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.context = context
        super().__init__(self.message)


class SpecError(ComfysweepError):
    """The sweep spec is invalid."""


class InputError(SpecError):
    """An input value does not fit the model's schema."""


class StoreError(ComfysweepError):
    """The job store cannot be used."""


class StoreLockedError(StoreError):
    """Another runner holds this store."""


class StoreBusyError(StoreError):
    """Another program holds the store's database for now."""


class TransitionError(StoreError):
    """That job state change is not allowed."""


class ApiError(ComfysweepError):
    """The Model API refused the request."""

    def __init__(
        self,
        message: str | None = None,
        *,
        status_code: int | None = None,
        error_code: int | None = None,
        detail: Any = None,
        retry_after: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.status_code = status_code
        self.error_code = error_code
        self.detail = detail
        self.retry_after = retry_after


class AuthError(ApiError):
    """The API token is missing, wrong or expired."""


class BalanceError(ApiError):
    """The account has no balance left."""


class ModelNotFound(ApiError):
    """The Model API does not know this model."""


class ValidationFailed(ApiError):
    """The Model API refused the input."""


class RequestNotFound(ApiError):
    """The Model API no longer knows this request id."""


class ServerError(ApiError):
    """The Model API kept failing."""


class TransportError(ComfysweepError):
    """The Model API could not be reached."""


class OutcomeUnknown(TransportError):
    """The submit was sent but its answer was lost: the job may exist and be billed."""


class DownloadError(ComfysweepError):
    """An output could not be downloaded."""


class OutputExpired(DownloadError):
    """The output URL has expired."""


class OutputInvalid(DownloadError):
    """A downloaded output is not a complete, readable file of the requested shape."""


class ResultsError(ComfysweepError):
    """The results folder cannot be used as it is."""


class ExportError(ComfysweepError):
    """The export cannot be written."""


class DefaultsChanged(ComfysweepError):
    """Jobs differ from submitted ones only in a changed schema default."""


class EmulatorError(ComfysweepError):
    """The emulator cannot start."""
