"""Exception hierarchy of the SDK; one class per family of error codes (docs/API.md §3)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "AuthenticationError",
    "BudgetExceededError",
    "ConfigurationError",
    "ConflictError",
    "FutureBudgetExceededError",
    "FutureCancelledError",
    "FutureError",
    "FutureFailedError",
    "FutureTimeoutError",
    "IdempotencyConflictError",
    "IntegrityError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ServerError",
    "TenSafeError",
    "TenSafeTimeoutError",
    "ValidationError",
    "error_from_response",
    "future_error",
]


class TenSafeError(Exception):
    """Base of every SDK error: `.code` (stable snake_case), `.status` (HTTP or None)."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.details: dict[str, Any] = dict(details or {})
        self.request_id = request_id

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        rid = f", request_id={self.request_id}" if self.request_id else ""
        return f"{self.message} ({where}code={self.code}{rid})"


class ConfigurationError(TenSafeError, ValueError):
    """The SDK is not configured (no API key, bad base URL)."""

    default_code = "configuration_error"


class IntegrityError(TenSafeError):
    """A server answer does not match what the client can check (e.g. a content hash)."""

    default_code = "integrity_error"


class ValidationError(TenSafeError, ValueError):
    """400 invalid_request / schema_violation, 405, 415, or a client-side input check."""

    default_code = "invalid_request"


class PayloadTooLargeError(ValidationError):
    """413 payload_too_large."""

    default_code = "payload_too_large"


class AuthenticationError(TenSafeError):
    """401 unauthenticated."""

    default_code = "unauthenticated"


class PermissionDeniedError(TenSafeError):
    """403 forbidden."""

    default_code = "forbidden"


class NotFoundError(TenSafeError):
    """404 not_found (also: another tenant's resource)."""

    default_code = "not_found"


class ConflictError(TenSafeError):
    """409 conflict: the resource's state forbids the operation."""

    default_code = "conflict"


class IdempotencyConflictError(ConflictError):
    """409 idempotency_conflict: key reused with a different request."""

    default_code = "idempotency_conflict"


class BudgetExceededError(TenSafeError):
    """The privacy budget cannot pay for the step (422, or a failed future)."""

    default_code = "budget_exceeded"


class RateLimitError(TenSafeError):
    """429 rate_limited; `.retry_after` in seconds when the server said so."""

    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(TenSafeError):
    """5xx or 408 after retries were exhausted."""

    default_code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TenSafeTimeoutError(TenSafeError, TimeoutError):
    """Base of the SDK's timeouts (also a builtin `TimeoutError`)."""

    default_code = "timeout"


class APIConnectionError(TenSafeError):
    """The server could not be reached (after retries)."""

    default_code = "connection_error"


class RequestTimeoutError(APIConnectionError, TenSafeTimeoutError):
    """An HTTP request timed out (after retries)."""

    default_code = "timeout"


class FutureError(TenSafeError):
    """Base of errors about one future; `.future_id`."""

    def __init__(self, message: str, *, future_id: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.future_id = future_id


class FutureFailedError(FutureError):
    """The operation behind a future failed; `.code` is the future's error code."""

    default_code = "internal_error"


class FutureBudgetExceededError(FutureFailedError, BudgetExceededError):
    """A step was refused by the privacy accountant (future error `budget_exceeded`)."""

    default_code = "budget_exceeded"


class FutureCancelledError(FutureError):
    """The future was cancelled before it ran."""

    default_code = "cancelled"


class FutureTimeoutError(FutureError, TenSafeTimeoutError):
    """`FutureHandle.result(timeout=...)` ran out of time; the future itself goes on."""

    default_code = "timeout"


_BY_CODE: dict[str, type[TenSafeError]] = {
    "invalid_request": ValidationError,
    "schema_violation": ValidationError,
    "method_not_allowed": ValidationError,
    "unsupported_media_type": ValidationError,
    "payload_too_large": PayloadTooLargeError,
    "unauthenticated": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "idempotency_conflict": IdempotencyConflictError,
    "idempotency_in_progress": ConflictError,
    "budget_exceeded": BudgetExceededError,
    "rate_limited": RateLimitError,
    "request_timeout": ServerError,
    "internal_error": ServerError,
    "bad_gateway": ServerError,
    "unavailable": ServerError,
    "upstream_timeout": ServerError,
}

_CODE_BY_STATUS: dict[int, str] = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "upstream_timeout",
}


def _class_for(status: int, code: str) -> type[TenSafeError]:
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls
    if status >= 500:
        return ServerError
    return _BY_CODE.get(_CODE_BY_STATUS.get(status, ""), TenSafeError)


def error_from_response(
    status: int,
    body: Any,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> TenSafeError:
    """Build the exception for a non-2xx answer (body: parsed JSON or None)."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        code = err["code"]
        message = str(err.get("message") or code)
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
        request_id = request_id or err.get("request_id")
    else:
        code = _CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "http_error")
        message = f"HTTP {status}"
        details = {}
    cls = _class_for(status, code)
    kw: dict[str, Any] = {"code": code, "status": status, "details": details, "request_id": request_id}
    if cls in (RateLimitError, ServerError):
        if retry_after is None and isinstance(details.get("retry_after_s"), int | float):
            retry_after = float(details["retry_after_s"])
        kw["retry_after"] = retry_after
    return cls(message, **kw)


def future_error(future_id: str, status: str, error: dict[str, Any] | None) -> FutureError:
    """Build the exception for a failed or cancelled future."""
    error = error or {}
    code = str(error.get("code") or ("cancelled" if status == "cancelled" else "internal_error"))
    message = str(error.get("message") or f"future {future_id} {status}")
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    if status == "cancelled":
        return FutureCancelledError(message, future_id=future_id, code=code, details=details)
    cls = FutureBudgetExceededError if code == "budget_exceeded" else FutureFailedError
    return cls(message, future_id=future_id, code=code, details=details)
