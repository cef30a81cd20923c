"""Transport behaviour with `httpx.MockTransport`: retries, backoff, Retry-After, error classes, config."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import tensafe
from tensafe._http import AsyncHTTP, RetryPolicy, SyncHTTP, normalise_base_url, parse_retry_after

Handler = Callable[[httpx.Request], httpx.Response]


def err(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": code, "details": {}}}
    return httpx.Response(status, json=body, headers={"X-Request-Id": "req_t", **(headers or {})})


class Script:
    """Answers requests from a list of responses/exceptions, recording every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return httpx.Response(a.status_code, headers=a.headers, content=a.content)  # fresh copy per call

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.seen]


def sync_http(script: Script, sleeps: list[float], **retry: Any) -> SyncHTTP:
    return SyncHTTP(
        "http://t",
        "tml-k",
        retry=RetryPolicy(**retry),
        transport=httpx.MockTransport(script),
        sleep=sleeps.append,
    )


def async_http(script: Script, sleeps: list[float], **retry: Any) -> AsyncHTTP:
    async def sleep(s: float) -> None:
        sleeps.append(s)

    return AsyncHTTP(
        "http://t", "tml-k", retry=RetryPolicy(**retry), transport=httpx.MockTransport(script), sleep=sleep
    )


OK = httpx.Response(202, json={"future_id": "fut_1"})


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_retryable_status_reuses_idempotency_key_and_backs_off(status: int) -> None:
    script, sleeps = Script(err(status, "x"), err(status, "x"), err(status, "x"), OK), []
    http = sync_http(script, sleeps, backoff_base=0.5, backoff_max=20)
    assert http.request("POST", "/training_clients/tc_1/optim_step", json={}) == {"future_id": "fut_1"}
    assert len(script.seen) == 4
    assert len(set(script.keys)) == 1 and script.keys[0]
    # exponential with jitter in [0.5, 1] x cap: caps 0.5, 1, 2
    assert len(sleeps) == 3
    for n, s in enumerate(sleeps):
        cap = 0.5 * 2**n
        assert cap * 0.5 <= s <= cap
    # every retry re-sends the same body bytes
    assert len({r.content for r in script.seen}) == 1


def test_each_logical_call_gets_a_fresh_uuid4_key() -> None:
    import uuid

    script, sleeps = Script(OK), []
    http = sync_http(script, sleeps)
    http.request("POST", "/x", json={"a": 1})
    http.request("POST", "/x", json={"a": 1})
    assert script.keys[0] != script.keys[1]
    assert all(uuid.UUID(k).version == 4 for k in script.keys if k)
    http.request("GET", "/y")
    assert script.seen[-1].headers.get("Idempotency-Key") is None


def test_backoff_is_capped() -> None:
    p = RetryPolicy(backoff_base=1, backoff_max=3)
    assert all(1.5 <= p.backoff(10) <= 3 for _ in range(50))


def test_429_honours_retry_after_seconds_exactly() -> None:
    script, sleeps = Script(err(429, "rate_limited", {"Retry-After": "3"}), OK), []
    http = sync_http(script, sleeps)
    http.request("POST", "/x", json={})
    assert sleeps == [3.0]
    assert script.keys[0] == script.keys[1]


def test_503_retry_after_http_date_is_honoured() -> None:
    import email.utils
    import time

    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    script, sleeps = Script(err(503, "unavailable", {"Retry-After": date}), OK), []
    sync_http(script, sleeps).request("GET", "/x")
    assert 3.5 <= sleeps[0] <= 5.0


def test_retry_after_beyond_max_gives_up_at_once() -> None:
    script, sleeps = Script(err(429, "rate_limited", {"Retry-After": "600"})), []
    with pytest.raises(tensafe.RateLimitError) as ei:
        sync_http(script, sleeps, retry_after_max=60).request("GET", "/x")
    assert ei.value.retry_after == 600.0 and ei.value.status == 429 and ei.value.code == "rate_limited"
    assert sleeps == [] and len(script.seen) == 1


def test_retries_exhausted_raise_last_error() -> None:
    script, sleeps = Script(err(503, "unavailable")), []
    with pytest.raises(tensafe.ServerError) as ei:
        sync_http(script, sleeps, max_retries=2, backoff_base=0.01).request("POST", "/x", json={})
    assert ei.value.code == "unavailable" and ei.value.status == 503 and ei.value.request_id == "req_t"
    assert len(script.seen) == 3 and len(set(script.keys)) == 1


def test_idempotency_in_progress_is_retried() -> None:
    script, sleeps = Script(err(409, "idempotency_in_progress"), OK), []
    assert sync_http(script, sleeps).request("POST", "/x", json={}) == {"future_id": "fut_1"}
    assert len(sleeps) == 1 and script.keys[0] == script.keys[1]


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "invalid_request", tensafe.ValidationError),
        (400, "schema_violation", tensafe.ValidationError),
        (401, "unauthenticated", tensafe.AuthenticationError),
        (403, "forbidden", tensafe.PermissionDeniedError),
        (404, "not_found", tensafe.NotFoundError),
        (409, "conflict", tensafe.ConflictError),
        (409, "idempotency_conflict", tensafe.IdempotencyConflictError),
        (413, "payload_too_large", tensafe.PayloadTooLargeError),
        (422, "budget_exceeded", tensafe.BudgetExceededError),
        (501, "not_implemented", tensafe.ServerError),
    ],
)
def test_non_retryable_errors_raise_at_once(status: int, code: str, cls: type) -> None:
    script, sleeps = Script(err(status, code)), []
    with pytest.raises(cls) as ei:
        sync_http(script, sleeps).request("POST", "/x", json={})
    assert ei.value.code == code and ei.value.status == status and ei.value.request_id == "req_t"
    assert len(script.seen) == 1 and sleeps == []


def test_connection_errors_are_retried_then_raised() -> None:
    script, sleeps = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), OK), []
    assert sync_http(script, sleeps).request("POST", "/x", json={}) == {"future_id": "fut_1"}
    assert len(sleeps) == 2 and len(set(script.keys)) == 1

    script, sleeps = Script(httpx.ConnectError("refused")), []
    with pytest.raises(tensafe.APIConnectionError) as ei:
        sync_http(script, sleeps, max_retries=1).request("GET", "/x")
    assert ei.value.code == "connection_error" and ei.value.status is None

    script, sleeps = Script(httpx.ReadTimeout("slow")), []
    with pytest.raises(tensafe.RequestTimeoutError) as te:
        sync_http(script, sleeps, max_retries=0).request("GET", "/x")
    assert isinstance(te.value, TimeoutError)


def test_headers_and_json_encoding() -> None:
    script, sleeps = Script(OK), []
    http = sync_http(script, sleeps)
    http.request(
        "POST", "/x", json={"text": "é", "n": [1, 2]}, params={"a": None, "b": True, "ids": ["x", "y"]}
    )
    r = script.seen[0]
    assert r.headers["Authorization"] == "Bearer tml-k"
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["User-Agent"].startswith("tensafe-python/")
    assert json.loads(r.content) == {"text": "é", "n": [1, 2]}
    assert r.url.path == "/api/v1/x" and r.url.params["b"] == "true" and r.url.params["ids"] == "x,y"
    assert "a" not in r.url.params
    with pytest.raises(tensafe.ValidationError):
        http.request("POST", "/x", json={"loss": float("nan")})


def test_non_json_success_body_is_an_error() -> None:
    script, sleeps = Script(httpx.Response(200, text="<html>")), []
    with pytest.raises(tensafe.ServerError) as ei:
        sync_http(script, sleeps).request("GET", "/x")
    assert ei.value.code == "invalid_response"


async def test_async_transport_retries_with_same_key() -> None:
    script, sleeps = Script(err(503, "unavailable"), err(429, "rate_limited", {"Retry-After": "2"}), OK), []
    http = async_http(script, sleeps, backoff_base=0.5)
    assert await http.request("POST", "/x", json={"a": 1}) == {"future_id": "fut_1"}
    assert len(set(script.keys)) == 1 and len(script.seen) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and sleeps[1] == 2.0
    with pytest.raises(tensafe.NotFoundError):
        await async_http(Script(err(404, "not_found")), []).request("GET", "/x")
    await http.aclose()


def test_base_url_normalisation() -> None:
    assert normalise_base_url("http://h:8000") == "http://h:8000/api/v1"
    assert normalise_base_url("http://h:8000/") == "http://h:8000/api/v1"
    assert normalise_base_url("https://h/api/v1/") == "https://h/api/v1"
    with pytest.raises(tensafe.ValidationError):
        normalise_base_url("h:8000")
    assert parse_retry_after("bogus") is None and parse_retry_after("1.5") == 1.5


def test_service_client_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSAFE_BASE_URL", "http://env-host:9000")
    monkeypatch.setenv("TENSAFE_API_KEY", "tml-env")
    seen: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, json={"status": "ok"})

    with tensafe.ServiceClient(transport=httpx.MockTransport(handler)) as svc:
        assert svc.base_url == "http://env-host:9000/api/v1"
        assert svc.health() == {"status": "ok"}
    assert seen[0].headers["Authorization"] == "Bearer tml-env"
    assert str(seen[0].url) == "http://env-host:9000/api/v1/healthz"
    # explicit arguments win over the environment
    with tensafe.ServiceClient("http://arg:1", "tml-arg", transport=httpx.MockTransport(handler)) as svc:
        svc.health()
    assert seen[-1].headers["Authorization"] == "Bearer tml-arg" and seen[-1].url.host == "arg"


def test_service_client_without_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSAFE_API_KEY", raising=False)
    with pytest.raises(tensafe.ConfigurationError):
        tensafe.ServiceClient("http://h")
