"""Two tenants cannot see or touch each other's clients, futures, audit logs, artifacts, datasets."""

from __future__ import annotations

import pytest
from gateway_harness import Env, wait_status

pytestmark = pytest.mark.integration

FB = {"data": [{"tokens": [1, 2, 3], "target_tokens": [2, 3, 4]}]}


async def test_other_tenants_resources_are_404_everywhere(env: Env) -> None:
    a, b = env.tenant("alpha"), env.tenant("beta")
    async with env.trainer(), env.gateway() as c:
        r = await c.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=a.h)
        cid, create_fid = r.json()["client_id"], r.json()["future_id"]
        await wait_status(c, a, create_fid)
        r = await c.post(f"/api/v1/training_clients/{cid}/save_state", json={"name": "ckpt"}, headers=a.h)
        art = (await wait_status(c, a, r.json()["future_id"]))["result"]["artifact_id"]
        r = await c.post("/api/v1/datasets", json={"name": "d", "records": [{"text": "x"}]}, headers=a.h)
        ds = r.json()["dataset_id"]
        # B's own client, to try A's artifact through it
        r = await c.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=b.h)
        b_cid = r.json()["client_id"]
        await wait_status(c, b, r.json()["future_id"])

        before = await env.command_count()
        not_found = []
        for method, path, body in [
            ("GET", f"/api/v1/training_clients/{cid}", None),
            ("GET", f"/api/v1/training_clients/{cid}/dp_metrics", None),
            ("GET", f"/api/v1/training_clients/{cid}/audit_logs", None),
            ("POST", f"/api/v1/training_clients/{cid}/forward_backward", FB),
            ("POST", f"/api/v1/training_clients/{cid}/optim_step", {}),
            ("POST", f"/api/v1/training_clients/{cid}/sample", {"prompts": ["x"]}),
            ("POST", f"/api/v1/training_clients/{cid}/save_state", {}),
            ("POST", f"/api/v1/training_clients/{cid}/load_state", {"artifact_id": art}),
            ("POST", f"/api/v1/training_clients/{b_cid}/load_state", {"artifact_id": art}),
            ("GET", f"/api/v1/futures/{create_fid}", None),
            ("DELETE", f"/api/v1/futures/{create_fid}", None),
            ("POST", f"/api/v1/futures/{create_fid}/cancel", {}),
            ("GET", f"/api/v1/artifacts/{art}", None),
            ("GET", f"/api/v1/datasets/{ds}", None),
            ("POST", "/api/v1/training_clients", {"model_ref": "tensafe-tiny-llama", "dataset_id": ds}),
        ]:
            r = await c.request(method, path, json=body, headers=b.h)
            not_found.append((method, path, r.status_code, r.json()["error"]["code"]))
        assert all(s == 404 and code == "not_found" for *_, s, code in not_found), not_found
        assert await env.command_count() == before  # nothing published on B's behalf

        # lists only hold the caller's own resources
        assert [
            x["client_id"]
            for x in (await c.get("/api/v1/training_clients", headers=b.h)).json()["training_clients"]
        ] == [b_cid]
        assert (await c.get("/api/v1/artifacts", headers=b.h)).json()["artifacts"] == []
        assert (await c.get("/api/v1/artifacts", params={"client_id": cid}, headers=b.h)).json()[
            "artifacts"
        ] == []
        assert (await c.get("/api/v1/datasets", headers=b.h)).json()["datasets"] == []
        assert (await c.get("/api/v1/futures", params={"ids": create_fid}, headers=b.h)).json()[
            "futures"
        ] == []
        # and A still sees everything
        assert (await c.get(f"/api/v1/artifacts/{art}", headers=a.h)).status_code == 200
        assert (await c.get(f"/api/v1/training_clients/{cid}/audit_logs", headers=a.h)).json()["entries"]


async def test_same_idempotency_key_in_two_tenants_is_two_commands(env: Env) -> None:
    a, b = env.tenant("alpha"), env.tenant("beta")
    async with env.gateway() as c:
        body = {"model_ref": "tensafe-tiny-llama"}
        ra = await c.post("/api/v1/training_clients", json=body, headers={**a.h, "Idempotency-Key": "same"})
        rb = await c.post("/api/v1/training_clients", json=body, headers={**b.h, "Idempotency-Key": "same"})
        assert ra.status_code == rb.status_code == 202
        assert (
            ra.json()["future_id"] != rb.json()["future_id"]
            and ra.json()["client_id"] != rb.json()["client_id"]
        )
        assert "idempotent-replayed" not in rb.headers
