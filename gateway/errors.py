"""JSON errors of docs/API.md §3 and the handlers that guarantee bad input is never a 500.

Every non-2xx body is ``{"error": {"code", "message", "details", "request_id"}}``.
Routes raise :class:`ApiError`; Starlette's own 404/405 and anything unexpected
are translated here too, so a client always gets the same shape.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "tensafe.request_id"


class ApiError(Exception):
    """An error answer: HTTP status + stable code + details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


# Constructors for the common cases, so routes read like the table in API.md §3.
def invalid_request(message: str, parameter: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, {"parameter": parameter} if parameter else {})


def schema_violation(errors: list[dict[str, str]]) -> ApiError:
    first = errors[0] if errors else {"path": "", "message": "invalid body"}
    where = f"{first['path']}: " if first["path"] else ""
    return ApiError(400, "schema_violation", where + first["message"], {"errors": errors})


def one_violation(path: str, message: str) -> ApiError:
    return schema_violation([{"path": path, "message": message}])


def unauthenticated(message: str = "missing or invalid API key") -> ApiError:
    return ApiError(401, "unauthenticated", message, {}, {"WWW-Authenticate": 'Bearer realm="tensafe"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(resource: str | None = None, message: str | None = None) -> ApiError:
    msg = message or (f"{resource.replace('_', ' ')} not found" if resource else "not found")
    return ApiError(404, "not_found", msg, {"resource": resource} if resource else {})


def conflict(reason: str, message: str, **details: Any) -> ApiError:
    return ApiError(409, "conflict", message, {"reason": reason, **details})


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes", {"limit_bytes": limit})


def unavailable(message: str, retry_after: int | None = None) -> ApiError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return ApiError(503, "unavailable", message, {}, headers)


def request_id_of(request: Request) -> str:
    return request.scope.get(REQUEST_ID_KEY) or ""


def error_response(request: Request, err: ApiError) -> JSONResponse:
    body = {
        "error": {
            "code": err.code,
            "message": err.message,
            "details": err.details,
            "request_id": request_id_of(request),
        }
    }
    return JSONResponse(
        body, status_code=err.status, headers=err.headers, media_type="application/json; charset=utf-8"
    )


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (unknown path, wrong method) in our shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        methods = [m.strip() for m in allow.split(",") if m.strip()]
        err = ApiError(
            405, "method_not_allowed", f"method {request.method} not allowed here", {"allow": methods}
        )
        err.headers = {"Allow": allow} if allow else {}
        return error_response(request, err)
    if exc.status_code == 404:
        return error_response(request, ApiError(404, "not_found", f"no route {request.url.path}", {}))
    if exc.status_code == 413:
        return error_response(request, ApiError(413, "payload_too_large", exc.detail, {}))
    code = "invalid_request" if 400 <= exc.status_code < 500 else "internal_error"
    return error_response(request, ApiError(exc.status_code, code, str(exc.detail), {}))


async def unhandled_handler(request: Request, exc: Exception) -> Response:
    """A bug: log it with the request id, answer the documented 500 shape."""
    log.exception("unhandled error (request %s)", request_id_of(request), exc_info=exc)
    return error_response(request, ApiError(500, "internal_error", "internal error", {}))


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    HTTPException: http_exception_handler,
    Exception: unhandled_handler,
}
