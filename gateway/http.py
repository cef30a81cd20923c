"""HTTP plumbing shared by every route: request ids, body limits, JSON decoding,
query parameters, Idempotency-Key. Nothing here knows about training.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from tensafe.gateway.errors import REQUEST_ID_KEY, ApiError, invalid_request, payload_too_large
from tensafe.gateway.ids import IDEMPOTENCY_KEY_RE, REQUEST_ID_RE

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestIdMiddleware:
    """Every response carries ``X-Request-Id`` (echoed if valid, else ``req_`` + 32 hex).

    Also the last line of defence: an exception that escaped the app becomes the
    documented 500 body (with the request id) instead of Starlette's plain text.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id":
                cand = v.decode("latin-1")
                rid = cand if REQUEST_ID_RE.match(cand) else None
                break
        rid = rid or "req_" + secrets.token_hex(16)
        scope[REQUEST_ID_KEY] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error (request %s)", rid)
            if started:
                raise
            body = {
                "error": {
                    "code": "internal_error",
                    "message": "internal error",
                    "details": {},
                    "request_id": rid,
                }
            }
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object ({} when empty), enforcing ``limit`` on Content-Length
    and on the bytes actually received (a lying or absent Content-Length does not help)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise invalid_request("Content-Length is not a number", "Content-Length") from None
        if n > limit:
            raise payload_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "invalid_request", "client disconnected while sending the body", {}) from None
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    ctype = request.headers.get("content-type")
    if ctype is None:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json", {})
    mime, _, params = ctype.partition(";")
    if mime.strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json", {})
    for param in params.split(";"):
        k, _, v = param.partition("=")
        if k.strip().lower() == "charset" and v.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_media_type", "only the utf-8 charset is accepted", {})
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise invalid_request("body is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise invalid_request(f"body is not valid JSON: {e}"[:300]) from None
    if not isinstance(body, dict):
        raise invalid_request("body must be a JSON object")
    return body


def idempotency_key(request: Request) -> str | None:
    a = request.headers.get("idempotency-key")
    b = request.headers.get("x-idempotency-key")
    if a is not None and b is not None and a != b:
        raise invalid_request("Idempotency-Key and X-Idempotency-Key differ", "Idempotency-Key")
    key = a if a is not None else b
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise invalid_request("Idempotency-Key must match ^[A-Za-z0-9._:-]{1,255}$", "Idempotency-Key")
    return key


def query_int(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise invalid_request(f"{name} must be an integer", name) from None
    if not lo <= v <= hi:
        raise invalid_request(f"{name} must be between {lo} and {hi}", name)
    return v


def query_wait(request: Request, max_wait: float) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        v = float(raw)
    except ValueError:
        raise invalid_request("wait must be a number of seconds", "wait") from None
    if math.isnan(v) or v < 0:
        raise invalid_request("wait must be >= 0", "wait")
    return min(v, max_wait)


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


class ApiJSONResponse(JSONResponse):
    """JSON with an explicit charset; a non-finite float (a diverged loss) becomes null
    instead of failing the render (JSON has no NaN)."""

    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return ApiJSONResponse(body, status_code=status, headers=headers)
