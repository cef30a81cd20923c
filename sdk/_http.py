"""HTTP transport: httpx sync and async clients with retries (docs/API.md §8).

Retried: connection errors and timeouts, 408, 409 idempotency_in_progress, 429, 500, 502, 503,
504 — with exponential backoff and jitter, or exactly `Retry-After` when the server sends it.
A POST gets one `Idempotency-Key` per logical call, re-sent unchanged on every retry.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as _json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._version import __version__
from .errors import (
    APIConnectionError,
    RequestTimeoutError,
    ServerError,
    TenSafeError,
    ValidationError,
    error_from_response,
)

__all__ = ["API_PREFIX", "AsyncHTTP", "RetryPolicy", "SyncHTTP", "normalise_base_url"]

logger = logging.getLogger("tensafe")

API_PREFIX = "/api/v1"
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
RETRY_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass
class RetryPolicy:
    """How often and how long to wait between attempts."""

    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    retry_after_max: float = 60.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def backoff(self, attempt: int) -> float:
        """Delay before retry `attempt` (0-based): capped exponential times U[0.5, 1]."""
        cap = min(self.backoff_max, self.backoff_base * (2**attempt))
        return cap * (0.5 + 0.5 * self.rng.random())


def normalise_base_url(base_url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/api/v1` all give the API root."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValidationError(
            f"base_url must start with http:// or https://: {base_url!r}", code="configuration_error"
        )
    if not url.endswith(API_PREFIX):
        url += API_PREFIX
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def encode_json(body: Any) -> bytes:
    """Compact UTF-8 JSON; NaN/Infinity refused (not JSON)."""
    try:
        return _json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"request body is not JSON-serialisable: {exc}") from exc


@dataclass
class _Prepared:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None
    timeout: httpx.Timeout


class _Outcome:
    """What to do with one attempt: return `value`, or retry after `delay`, or raise `error`."""

    __slots__ = ("value", "delay", "error")

    def __init__(
        self, value: Any = None, delay: float | None = None, error: TenSafeError | None = None
    ) -> None:
        self.value = value
        self.delay = delay
        self.error = error


class _BaseHTTP:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"tensafe-python/{__version__}",
            **dict(headers or {}),
        }

    def _prepare(
        self,
        method: str,
        path: str,
        json: Any,
        params: Mapping[str, Any] | None,
        idempotency_key: str | None,
        read_timeout: float | None,
    ) -> _Prepared:
        method = method.upper()
        url = self.base_url + path
        if params:
            clean = {k: _param(v) for k, v in params.items() if v is not None}
            if clean:
                url += "?" + str(httpx.QueryParams(clean))
        headers = dict(self._headers)
        content: bytes | None = None
        if method in ("POST", "PUT", "PATCH"):
            content = encode_json({} if json is None else json)
            headers["Content-Type"] = "application/json"
        elif json is not None:
            content = encode_json(json)
            headers["Content-Type"] = "application/json"
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        timeout = httpx.Timeout(self.timeout, read=read_timeout if read_timeout is not None else self.timeout)
        return _Prepared(method, url, headers, content, timeout)

    def _on_response(self, prep: _Prepared, response: httpx.Response, attempt: int) -> _Outcome:
        request_id = response.headers.get("X-Request-Id")
        if 200 <= response.status_code < 300 and response.headers.get("content-type", "").startswith(
            BINARY_TYPES
        ):
            return _Outcome(value=response.content)  # a package download: bytes, not JSON
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        if 200 <= response.status_code < 300:
            if response.content and body is None:
                return _Outcome(
                    error=ServerError(
                        "response is not JSON",
                        code="invalid_response",
                        status=response.status_code,
                        request_id=request_id,
                    )
                )
            return _Outcome(value=body)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = error_from_response(
            response.status_code, body, request_id=request_id, retry_after=retry_after
        )
        retryable = response.status_code in RETRY_STATUSES or error.code == "idempotency_in_progress"
        if not retryable or attempt >= self.retry.max_retries:
            return _Outcome(error=error)
        if retry_after is not None:
            if retry_after > self.retry.retry_after_max:
                return _Outcome(error=error)
            delay = retry_after
        else:
            delay = self.retry.backoff(attempt)
        logger.debug(
            "%s %s -> %s (%s); retry %d in %.2fs",
            prep.method,
            prep.url,
            response.status_code,
            error.code,
            attempt + 1,
            delay,
        )
        return _Outcome(delay=delay, error=error)

    def _on_transport_error(self, prep: _Prepared, exc: Exception, attempt: int) -> _Outcome:
        cls = RequestTimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
        error = cls(f"{prep.method} {prep.url}: {type(exc).__name__}: {exc}")
        if not isinstance(exc, RETRY_TRANSPORT_ERRORS) or attempt >= self.retry.max_retries:
            return _Outcome(error=error)
        delay = self.retry.backoff(attempt)
        logger.debug(
            "%s %s -> %s; retry %d in %.2fs", prep.method, prep.url, type(exc).__name__, attempt + 1, delay
        )
        return _Outcome(delay=delay, error=error)


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    return str(v)


class SyncHTTP(_BaseHTTP):
    """Blocking transport over `httpx.Client`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, retry=retry, headers=headers)
        self.sleep = sleep
        self._client = httpx.Client(transport=transport, follow_redirects=False)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        read_timeout: float | None = None,
    ) -> Any:
        """Send with retries; return the parsed JSON body or raise a `TenSafeError`."""
        prep = self._prepare(method, path, json, params, idempotency_key, read_timeout)
        attempt = 0
        while True:
            try:
                response = self._client.request(
                    prep.method, prep.url, headers=prep.headers, content=prep.content, timeout=prep.timeout
                )
            except httpx.HTTPError as exc:
                outcome = self._on_transport_error(prep, exc, attempt)
                if outcome.delay is None:
                    raise outcome.error from exc  # type: ignore[misc]
            else:
                outcome = self._on_response(prep, response, attempt)
                if outcome.delay is None:
                    if outcome.error is not None:
                        raise outcome.error
                    return outcome.value
            self.sleep(outcome.delay)
            attempt += 1

    def close(self) -> None:
        self._client.close()


BINARY_TYPES = ("application/vnd.tensafe.tssp+zip", "application/octet-stream")


class AsyncHTTP(_BaseHTTP):
    """Non-blocking transport over `httpx.AsyncClient` (one per event loop)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, retry=retry, headers=headers)
        self.sleep = sleep
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._loop.is_closed():
            # httpx async pools are bound to the loop that opened them: one client per loop.
            self._client = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
            self._loop = loop
        return self._client

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        read_timeout: float | None = None,
    ) -> Any:
        """Send with retries; return the parsed JSON body or raise a `TenSafeError`."""
        prep = self._prepare(method, path, json, params, idempotency_key, read_timeout)
        client = self._get_client()
        attempt = 0
        while True:
            try:
                response = await client.request(
                    prep.method, prep.url, headers=prep.headers, content=prep.content, timeout=prep.timeout
                )
            except httpx.HTTPError as exc:
                outcome = self._on_transport_error(prep, exc, attempt)
                if outcome.delay is None:
                    raise outcome.error from exc  # type: ignore[misc]
            else:
                outcome = self._on_response(prep, response, attempt)
                if outcome.delay is None:
                    if outcome.error is not None:
                        raise outcome.error
                    return outcome.value
            await self.sleep(outcome.delay)
            attempt += 1

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except RuntimeError:  # closed from another loop than its own
                pass

    def close_nowait(self) -> None:
        """Drop the async client without awaiting (for a sync `close()`)."""
        self._client = None
        self._loop = None
