"""Requests become commands, the (stand-in) trainer answers on the ledger, futures resolve."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest
from gateway_harness import Env, wait_status

pytestmark = pytest.mark.integration

FB = {
    "batch": {"input_ids": [[1, 5, 9, 2], [1, 7, 2]], "labels": [[-100, 5, 9, 2], [-100, 7, 2]]},
    "return_logprobs": True,
}


async def _client(c, t) -> str:
    r = await c.post(
        "/api/v1/training_clients",
        json={"model_ref": "tensafe-tiny-llama", "dp_config": {"dataset_size": 1000}},
        headers=t.h,
    )
    assert r.status_code == 202, r.text
    return r.json()["client_id"]


async def test_full_flow_results_and_reads(env: Env) -> None:
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway() as c:
        r = await c.post(
            "/api/v1/training_clients",
            json={"model_ref": "tensafe-tiny-llama", "metadata": {"project": "x"}},
            headers=t.h,
        )
        assert r.status_code == 202 and r.headers["location"].startswith("/api/v1/futures/fut_")
        created = r.json()
        cid = created["client_id"]
        # read-your-writes: the client exists at once, the future is readable at once
        r = await c.get(f"/api/v1/training_clients/{cid}", headers=t.h)
        assert r.status_code == 200 and r.json()["status"] in ("creating", "ready")
        done = await wait_status(c, t, created["future_id"])
        assert done["status"] == "completed" and done["result"]["client_id"] == cid
        assert done["result"]["status"] == "ready" and done["result"]["metadata"] == {"project": "x"}

        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=t.h)
        assert r.status_code == 202 and r.json()["type"] == "forward_backward"
        fb = await wait_status(c, t, r.json()["future_id"])
        assert fb["status"] == "completed", fb
        res = fb["result"]
        assert res["num_samples"] == 2 and res["num_tokens"] == 7 and res["clip"]["max_norm"] == 3.0
        assert res["logprobs"] == [[-0.5] * 4, [-0.5] * 3]  # sealed by the trainer, opened for the owner
        # the trainer opened exactly what was sent
        opened = trainer.opened["cmd_" + r.json()["future_id"][4:]]
        assert opened["input_ids"] == FB["batch"]["input_ids"] and opened["labels"] == FB["batch"]["labels"]

        r = await c.post(
            f"/api/v1/training_clients/{cid}/optim_step",
            json={"adam_params": {"learning_rate": 0.001}},
            headers=t.h,
        )
        step = await wait_status(c, t, r.json()["future_id"])
        assert step["result"]["step"] == 1 and step["result"]["epsilon_spent"] == 0.5
        assert step["result"]["epsilon_remaining"] == 7.5 and step["result"]["learning_rate"] == 0.001

        r = await c.post(
            f"/api/v1/training_clients/{cid}/sample",
            json={"prompts": ["hi", "yo"], "num_samples": 2},
            headers=t.h,
        )
        s = await wait_status(c, t, r.json()["future_id"])
        assert [x["prompt_index"] for x in s["result"]["samples"]] == [0, 0, 1, 1]
        assert s["result"]["samples"][0]["completion"] == "completion 0" and s["result"]["model_step"] == 1

        # save_state without a body: the default name is the step it will run at
        r = await c.post(f"/api/v1/training_clients/{cid}/save_state", headers=t.h)
        saved = await wait_status(c, t, r.json()["future_id"])
        art = saved["result"]
        assert art["name"] == "step-1" and art["content_hash"] == "sha256:" + "cd" * 32
        assert art["dp_certificate"]["epsilon"] == 0.5 and art["dp_certificate"]["guarantee"] == "unamplified"
        r = await c.get(f"/api/v1/artifacts/{art['artifact_id']}", headers=t.h)
        assert r.status_code == 200 and r.json()["client_id"] == cid
        r = await c.get("/api/v1/artifacts", params={"client_id": cid}, headers=t.h)
        assert [a["artifact_id"] for a in r.json()["artifacts"]] == [art["artifact_id"]]

        r = await c.post(
            f"/api/v1/training_clients/{cid}/load_state",
            json={"artifact_id": art["artifact_id"], "load_optimizer": False},
            headers=t.h,
        )
        loaded = await wait_status(c, t, r.json()["future_id"])
        assert loaded["result"] == {"artifact_id": art["artifact_id"], "step": 1, "loaded_optimizer": False}

        r = await c.get(f"/api/v1/training_clients/{cid}/dp_metrics", headers=t.h)
        m = r.json()
        assert (
            m["steps"] == 1
            and m["epsilon_spent"] == 0.5
            and m["target_epsilon"] == 8.0
            and m["guarantee"] == "unamplified"
        )

        r = await c.get(f"/api/v1/training_clients/{cid}/audit_logs", headers=t.h)
        log = r.json()
        types = [e["event_type"].rsplit(".", 1)[-1] for e in log["entries"]]
        assert types[:2] == ["CommandAccepted", "TrainingClientCreated"] and "StateSaved" in types
        assert log["entries"][0]["command_id"] == created["future_id"]
        for a, b in zip(log["entries"], log["entries"][1:], strict=False):
            if b["seq"] == a["seq"] + 1:
                assert b["prev_hash"] == a["hash"]
        r = await c.get(
            f"/api/v1/training_clients/{cid}/audit_logs",
            params={"after_seq": log["entries"][1]["seq"], "limit": 2},
            headers=t.h,
        )
        page = r.json()
        assert [e["seq"] for e in page["entries"]] == [e["seq"] for e in log["entries"][2:4]] and page[
            "has_more"
        ]

        r = await c.get("/api/v1/futures", params={"ids": f"{created['future_id']},fut_nope"}, headers=t.h)
        assert [f["future_id"] for f in r.json()["futures"]] == [created["future_id"]]


async def test_long_poll_resolves_when_outcome_lands(env: Env) -> None:
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway() as c:
        cid = await _client(c, t)
        trainer.hold = True
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=t.h)
        fid = r.json()["future_id"]
        t0 = time.monotonic()
        r = await c.get(f"/api/v1/futures/{fid}", params={"wait": 0.3}, headers=t.h)
        assert r.json()["status"] == "pending" and 0.25 < time.monotonic() - t0 < 3
        poll = asyncio.create_task(c.get(f"/api/v1/futures/{fid}", params={"wait": 20}, headers=t.h))
        await asyncio.sleep(0.3)
        assert not poll.done()
        t1 = time.monotonic()
        await trainer.release()
        r = await poll
        assert r.json()["status"] == "completed" and time.monotonic() - t1 < 5
        # wait > 30 is clamped, not refused
        r = await c.get(f"/api/v1/futures/{fid}", params={"wait": 999}, headers=t.h)
        assert r.status_code == 200


async def test_budget_refused_fails_future_then_gateway_refuses(env: Env) -> None:
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway() as c:
        cid = await _client(c, t)

        def refuse(cmd):
            if cmd.command_type == "OptimStep":
                return [
                    (
                        "BudgetRefused",
                        {"step_would_be": 1, "epsilon_would_be": 9.5, "target_epsilon": 8.0, "delta": 1e-5},
                    )
                ]
            return trainer.default(cmd)

        trainer.behave = refuse
        r = await c.post(f"/api/v1/training_clients/{cid}/optim_step", headers=t.h)
        f = await wait_status(c, t, r.json()["future_id"])
        assert f["status"] == "failed" and f["error"]["code"] == "budget_exceeded"
        assert f["error"]["details"] == {
            "epsilon_spent": 0.0,
            "epsilon_after_step": 9.5,
            "target_epsilon": 8.0,
        }
        before = await env.command_count()
        r = await c.post(f"/api/v1/training_clients/{cid}/optim_step", headers=t.h)
        assert r.status_code == 422 and r.json()["error"]["code"] == "budget_exceeded"
        assert await env.command_count() == before


async def test_trainer_failure_codes_map_to_future_errors(env: Env) -> None:
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway() as c:
        cid = await _client(c, t)

        def fail(cmd):
            if cmd.command_type == "ForwardBackward":
                return [
                    (
                        "CommandFailed",
                        {
                            "command_type": "tensafe.command.ForwardBackward",
                            "error_code": "invalid_batch",
                            "message": "token 9 >= vocab",
                        },
                    )
                ]
            return trainer.default(cmd)

        trainer.behave = fail
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=t.h)
        f = await wait_status(c, t, r.json()["future_id"])
        assert f["status"] == "failed" and f["error"]["code"] == "invalid_input"
        assert f["error"]["details"] == {"trainer_code": "invalid_batch"} and f["result"] is None


async def test_cancel_pending_and_not_pending(env: Env) -> None:
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway() as c:
        cid = await _client(c, t)
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=t.h)
        done = await wait_status(c, t, r.json()["future_id"])
        r = await c.delete(f"/api/v1/futures/{done['future_id']}", headers=t.h)
        assert r.status_code == 409 and r.json()["error"]["details"] == {
            "reason": "future_not_pending",
            "status": "completed",
        }

        trainer.hold = True
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=t.h)
        fid = r.json()["future_id"]
        r = await c.post(f"/api/v1/futures/{fid}/cancel", json={}, headers=t.h)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "cancelled" and body["error"]["code"] == "cancelled"
        r = await c.delete(f"/api/v1/futures/{fid}", headers=t.h)  # again: 200, same state
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        await trainer.release()
        assert ("cmd_" + fid[4:]) not in trainer.executed


async def test_datasets_and_poisson_clients(env: Env) -> None:
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway() as c:
        records = [{"text": "alpha"}, {"text": "beta"}]
        r = await c.post(
            "/api/v1/datasets",
            json={"name": "tickets", "records": records, "metadata": {"k": 1}},
            headers=t.h,
        )
        assert r.status_code == 201, r.text
        ds = r.json()
        canon = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert ds["content_hash"] == "sha256:" + hashlib.sha256(canon).hexdigest() and ds["num_records"] == 2
        r = await c.post(
            "/api/v1/training_clients",
            json={
                "model_ref": "tensafe-tiny-llama",
                "dataset_id": ds["dataset_id"],
                "dp_config": {"expected_batch_size": 1},
            },
            headers=t.h,
        )
        assert r.status_code == 202, r.text
        cid = r.json()["client_id"]
        await wait_status(c, t, r.json()["future_id"])
        r = await c.get(f"/api/v1/training_clients/{cid}", headers=t.h)
        dp = r.json()["dp"]
        assert dp["sampling"] == "poisson" and dp["guarantee"] == "exact" and dp["sample_rate"] == 0.5
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=t.h)
        assert r.status_code == 409 and r.json()["error"]["details"]["reason"] == "sampling_mode"
        r = await c.post(f"/api/v1/training_clients/{cid}/train_step", json={}, headers=t.h)
        f = await wait_status(c, t, r.json()["future_id"])
        assert f["result"]["step"] == 1 and f["result"]["num_samples"] == 3
        r = await c.get(f"/api/v1/datasets/{ds['dataset_id']}", headers=t.h)
        assert r.json()["status"] == "ready" and r.json()["metadata"] == {"k": 1}
        r = await c.get("/api/v1/datasets", headers=t.h)
        assert [d["dataset_id"] for d in r.json()["datasets"]] == [ds["dataset_id"]]
        [reg] = [x for x in trainer.seen if x.command_type == "RegisterDataset"]
        assert trainer.opened[reg.command_id] == {"texts": ["alpha", "beta"]}


async def test_pagination_newest_first(env: Env) -> None:
    t = env.tenant()
    async with env.gateway() as c:
        made = [await _client(c, t) for _ in range(5)]
        seen, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            r = await c.get("/api/v1/training_clients", params=params, headers=t.h)
            page = r.json()
            seen += [x["client_id"] for x in page["training_clients"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == made[::-1]
        r = await c.get("/api/v1/training_clients", params={"cursor": "garbage!"}, headers=t.h)
        assert r.status_code == 400 and r.json()["error"]["details"] == {"parameter": "cursor"}


async def test_poisson_client_waits_for_its_dataset(env: Env) -> None:
    """The trainer runs the dataset's partition and the client's independently: a Poisson
    client is only published once the dataset is registered (else 409 dataset_not_ready)."""
    t = env.tenant()
    async with env.trainer() as trainer, env.gateway(dataset_wait_s=0.5) as c:
        trainer.hold = True
        r = await c.post("/api/v1/datasets", json={"name": "d", "records": [{"text": "a"}]}, headers=t.h)
        ds = r.json()["dataset_id"]
        before = await env.command_count()
        r = await c.post(
            "/api/v1/training_clients",
            json={"model_ref": "tensafe-tiny-llama", "dataset_id": ds},
            headers=t.h,
        )
        assert r.status_code == 409 and r.json()["error"]["details"]["reason"] == "dataset_not_ready"
        assert await env.command_count() == before
        create = asyncio.create_task(
            c.post(
                "/api/v1/training_clients",
                json={"model_ref": "tensafe-tiny-llama", "dataset_id": ds},
                headers=t.h,
            )
        )
        await asyncio.sleep(0.1)
        await trainer.release()  # the registration lands while the request waits
        r = await create
        assert r.status_code == 202, r.text
        done = await wait_status(c, t, r.json()["future_id"])
        assert done["status"] == "completed" and done["result"]["dp"]["guarantee"] == "exact"
