"""App plumbing: request ids, the 500 shape, the plug-in point for a second API surface, OpenAPI."""

from __future__ import annotations

import httpx
import pytest
from gateway_harness import Env
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tensafe.gateway import create_app
from tensafe.gateway.routes import RestApi
from tensafe.gateway.service import GatewayService

pytestmark = pytest.mark.integration


def second_surface(service: GatewayService) -> list[Route]:
    """What a Tinker router looks like from the outside: routes over the same service."""

    async def caps(request: Request) -> JSONResponse:
        who = await service.auth.authenticate(request, write=False)
        return JSONResponse(
            {"tenant": who.tenant_id, "models": [m.model_ref for m in service.settings.models]}
        )

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("a bug")

    return [Route("/api/v1/get_server_capabilities", caps), Route("/api/v1/boom", boom)]


async def test_extra_routes_share_auth_and_bugs_are_json_500(env: Env) -> None:
    t = env.tenant()
    app = create_app(env.settings(), extra_routes=[second_surface])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            r = await c.get(
                "/api/v1/get_server_capabilities", headers={"X-API-Key": t.key, "X-Request-Id": "abc.123"}
            )
            assert r.status_code == 200 and r.json()["tenant"] == t.tenant_id
            assert r.headers["x-request-id"] == "abc.123"  # echoed when well-formed
            r = await c.get(
                "/api/v1/get_server_capabilities", headers={"X-API-Key": t.key, "X-Request-Id": "bad id!"}
            )
            assert r.headers["x-request-id"].startswith("req_") and len(r.headers["x-request-id"]) == 36
            assert (await c.get("/api/v1/get_server_capabilities")).status_code == 401
            r = await c.get("/api/v1/boom")
            assert r.status_code == 500
            assert r.json()["error"] == {
                "code": "internal_error",
                "message": "internal error",
                "details": {},
                "request_id": r.headers["x-request-id"],
            }


async def test_openapi_documents_every_route(env: Env) -> None:
    async with env.gateway() as c:
        doc = (await c.get("/openapi.json")).json()
        assert doc["openapi"] == "3.1.0"
        svc = c.app.state.service  # type: ignore[attr-defined]
        for method, path, _ in RestApi(svc).table():
            assert method.lower() in doc["paths"][path], (method, path)
            op = doc["paths"][path][method.lower()]
            assert any(code.startswith("2") for code in op["responses"])
        schemas = doc["components"]["schemas"]
        for ref in ("ForwardBackwardRequest", "Batch", "FutureState", "TrainingClient", "Error", "Artifact"):
            assert ref in schemas
        # the request schema carries the limits the server enforces
        batch = schemas["Batch"]["properties"]["input_ids"]
        assert batch["maxItems"] == 256 and batch["items"]["items"]["minimum"] == 0
        assert schemas["CreateTrainingClientRequest"]["additionalProperties"] is False


async def test_healthz_degrades_when_a_follower_dies(env: Env) -> None:
    async with env.gateway() as c:
        svc = c.app.state.service  # type: ignore[attr-defined]
        svc.followers.errors.append("ledger-0: LedgerError: breaks the chain")
        r = await c.get("/healthz")
        assert (
            r.status_code == 503 and r.json()["status"] == "degraded" and "ledger-0" in r.json()["reasons"][0]
        )


async def test_rate_limit_per_tenant(env: Env) -> None:
    a, b = env.tenant("a"), env.tenant("b")
    async with env.gateway(rate_limit_rps=1.0, rate_limit_burst=3) as c:
        codes = [(await c.get("/api/v1/models", headers=a.h)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await c.get("/api/v1/models", headers=a.h)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert (
            r.json()["error"]["code"] == "rate_limited" and r.json()["error"]["details"]["retry_after_s"] > 0
        )
        assert (await c.get("/api/v1/models", headers=b.h)).status_code == 200  # per tenant
