"""API keys: Argon2id hashes in a JSON file, one hash check per new key, cache after that."""

from __future__ import annotations

import json
import stat

import pytest
from gateway_harness import Env
from tensafe.gateway.tenants import TenantStore, create_tenant, main, parse_key

pytestmark = pytest.mark.integration


async def test_missing_malformed_unknown_wrong_keys_are_401(env: Env) -> None:
    t = env.tenant()
    lookup, secret = parse_key(t.key)  # type: ignore[misc]
    wrong_secret = f"tml-{lookup}-{'0' * 48 if secret != '0' * 48 else '1' * 48}"
    unknown = f"tml-{'f' * 16}-{secret}"
    async with env.gateway() as c:
        for headers in (
            {},
            {"Authorization": "Basic abc"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer not-a-key"},
            {"X-API-Key": unknown},
            {"X-API-Key": wrong_secret},
            {"Authorization": f"Bearer {t.key}", "X-API-Key": wrong_secret},
        ):
            r = await c.get("/api/v1/training_clients", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"]["code"] == "unauthenticated"
            assert r.headers["www-authenticate"] == 'Bearer realm="tensafe"'
            assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        # both headers with the same key, and X-API-Key alone, work
        r = await c.get("/api/v1/models", headers={"Authorization": f"Bearer {t.key}", "X-API-Key": t.key})
        assert r.status_code == 200 and r.json()["models"][0]["vocab_size"] == 8192
        r = await c.get("/api/v1/models", headers={"X-API-Key": t.key})
        assert r.status_code == 200
        # no auth needed for health and the API description
        assert (await c.get("/healthz")).json()["status"] == "ok"
        assert (await c.get("/api/v1/openapi.json")).json()["openapi"].startswith("3.1")


async def test_verified_keys_are_cached_and_revocation_applies(env: Env) -> None:
    t = env.tenant()
    async with env.gateway() as c:
        auth = c.app.state.service.auth  # type: ignore[attr-defined]
        for _ in range(5):
            assert (await c.get("/api/v1/training_clients", headers=t.h)).status_code == 200
        assert auth.argon2_checks == 1
        lookup, secret = parse_key(t.key)  # type: ignore[misc]
        wrong = f"tml-{lookup}-{'0' * 48 if secret != '0' * 48 else '1' * 48}"
        for _ in range(5):  # a wrong secret costs one Argon2 check, not one per request
            assert (await c.get("/api/v1/training_clients", headers={"X-API-Key": wrong})).status_code == 401
        assert auth.argon2_checks == 2
        TenantStore(env.tenants_path).revoke_key(t.key)  # another process (the CLI) revokes
        auth._last_refresh = 0.0  # don't wait for the 0.5 s refresh interval
        r = await c.get("/api/v1/training_clients", headers=t.h)
        assert r.status_code == 401


async def test_read_only_key_and_suspended_tenant_are_403(env: Env) -> None:
    t = env.tenant()
    store = TenantStore(env.tenants_path)
    ro = store.issue_key(t.tenant_id, scope="ro")
    async with env.gateway() as c:
        h = {"X-API-Key": ro}
        assert (await c.get("/api/v1/training_clients", headers=h)).status_code == 200
        before = await env.command_count()
        r = await c.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=h)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert await env.command_count() == before
        store.set_status(t.tenant_id, "suspended")
        c.app.state.service.auth._last_refresh = 0.0  # type: ignore[attr-defined]
        r = await c.get("/api/v1/training_clients", headers=t.h)
        assert r.status_code == 403


def test_store_file_holds_only_argon2id_hashes(tmp_path) -> None:
    path = tmp_path / "tenants.json"
    tenant_id, key = create_tenant(path, "acme")
    assert key.startswith("tml-") and parse_key(key) is not None
    raw = path.read_text()
    body = json.loads(raw)
    lookup, secret = parse_key(key)  # type: ignore[misc]
    assert secret not in raw and body["keys"][lookup]["hash"].startswith("$argon2id$")
    assert body["keys"][lookup]["tenant_id"] == tenant_id and body["tenants"][tenant_id]["name"] == "acme"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TenantStore(path)
    assert store.verify(key) is not None and store.verify(key[:-1] + ("0" if key[-1] != "0" else "1")) is None


def test_cli_create_and_list(tmp_path, capsys) -> None:
    path = str(tmp_path / "t.json")
    assert main(["--store", path, "create", "beta"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert TenantStore(path).verify(out["api_key"]).tenant_id == out["tenant_id"]
    assert main(["--store", path, "list"]) == 0
    assert out["tenant_id"] in capsys.readouterr().out
    assert main(["--store", path, "create", "bad/name"]) == 1
