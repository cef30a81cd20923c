"""Idempotency-Key: one command per key, replays, conflicts, and the same command id after a restart."""

from __future__ import annotations

import asyncio

import pytest
from gateway_harness import Env, wait_status
from tensafe.events.commands import Command, command_id_for

pytestmark = pytest.mark.integration

FB = {"batch": {"input_ids": [[1, 2, 3]]}}


async def _ids_on_topic(env: Env) -> list[str]:
    return [Command.decode(r.value).command_id for r in await env.command_records()]


async def _client(c, t) -> str:
    r = await c.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=t.h)
    return r.json()["client_id"]


async def test_same_key_same_body_is_one_command_and_same_future(env: Env) -> None:
    t = env.tenant()
    async with env.gateway() as c:
        cid = await _client(c, t)
        url = f"/api/v1/training_clients/{cid}/forward_backward"
        before = await env.command_count()
        h = {**t.h, "Idempotency-Key": "fb-1"}
        r1 = await c.post(url, json=FB, headers=h)
        r2 = await c.post(url, json=FB, headers={**t.h, "X-Idempotency-Key": "fb-1"})  # the Tinker alias
        # key order and whitespace do not matter: the fingerprint is over canonical JSON
        r3 = await c.post(
            url,
            content='{ "batch" : {"input_ids":[[1,2,3]]} }',
            headers={**h, "Content-Type": "application/json"},
        )
        assert r1.status_code == r2.status_code == r3.status_code == 202
        assert r1.json() == r2.json() == r3.json()
        assert "idempotent-replayed" not in r1.headers and r2.headers["idempotent-replayed"] == "true"
        assert await env.command_count() == before + 1
        cmd_id = command_id_for(t.tenant_id, "fb-1")
        assert r1.json()["future_id"] == "fut_" + cmd_id[4:]
        assert (await _ids_on_topic(env)).count(cmd_id) == 1


async def test_same_key_different_body_or_path_is_409(env: Env) -> None:
    t = env.tenant()
    async with env.gateway() as c:
        cid = await _client(c, t)
        h = {**t.h, "Idempotency-Key": "k-2"}
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=h)
        assert r.status_code == 202
        before = await env.command_count()
        r = await c.post(
            f"/api/v1/training_clients/{cid}/forward_backward",
            json={"batch": {"input_ids": [[1, 2, 4]]}},
            headers=h,
        )
        assert r.status_code == 409 and r.json()["error"] == {
            **r.json()["error"],
            "code": "idempotency_conflict",
            "details": {"idempotency_key": "k-2"},
        }
        r = await c.post(f"/api/v1/training_clients/{cid}/optim_step", json={}, headers=h)
        assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
        assert await env.command_count() == before


async def test_failed_request_does_not_consume_its_key(env: Env) -> None:
    t = env.tenant()
    async with env.gateway() as c:
        cid = await _client(c, t)
        h = {**t.h, "Idempotency-Key": "k-3"}
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json={"batch": {}}, headers=h)
        assert r.status_code == 400
        r = await c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=h)
        assert r.status_code == 202


async def test_concurrent_duplicates_publish_once(env: Env) -> None:
    t = env.tenant()
    async with env.gateway() as c:
        cid = await _client(c, t)
        before = await env.command_count()
        h = {**t.h, "Idempotency-Key": "race"}
        rs = await asyncio.gather(
            *(
                c.post(f"/api/v1/training_clients/{cid}/forward_backward", json=FB, headers=h)
                for _ in range(5)
            )
        )
        codes = sorted(r.status_code for r in rs)
        assert set(codes) <= {202, 409} and 202 in codes
        for r in rs:
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "idempotency_in_progress"
        assert await env.command_count() == before + 1


async def test_retry_after_restart_replays_the_same_command(env: Env) -> None:
    """A new gateway instance rebuilds what it needs from the log: the retry answers the
    same future and client ids and publishes nothing new."""
    t = env.tenant()
    body = {"model_ref": "tensafe-tiny-llama", "seed": 5}
    h = {**t.h, "Idempotency-Key": "create-1"}
    async with env.gateway() as c:
        first = await c.post("/api/v1/training_clients", json=body, headers=h)
    count = await env.command_count()
    async with env.gateway() as c2:  # a restarted gateway: new process state, same log
        again = await c2.post("/api/v1/training_clients", json=body, headers=h)
        assert again.status_code == 202 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        conflict = await c2.post("/api/v1/training_clients", json={**body, "seed": 6}, headers=h)
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
        # the pending future and the creating client survived the restart too
        r = await c2.get(f"/api/v1/futures/{first.json()['future_id']}", headers=t.h)
        assert r.status_code == 200 and r.json()["status"] == "pending"
        assert (
            await c2.get(f"/api/v1/training_clients/{first.json()['client_id']}", headers=t.h)
        ).status_code == 200
    assert await env.command_count() == count


async def test_crash_before_the_answer_republishes_the_same_command_id_and_the_effect_is_once(
    env: Env,
) -> None:
    """If the gateway died after publishing but before it could answer (and this instance
    has no record of the attempt), the retry publishes a command with the *same* id; the
    trainer skips the duplicate, so the effect happens exactly once."""
    t = env.tenant()
    async with env.trainer() as trainer:
        async with env.gateway() as c:
            r = await c.post(
                "/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=t.h
            )
            cid = r.json()["client_id"]
            await wait_status(c, t, r.json()["future_id"])  # on the ledger: any gateway knows it now
        h = {**t.h, "Idempotency-Key": "opt-1"}
        async with env.gateway(follow_commands=False) as c1:
            r1 = await c1.post(f"/api/v1/training_clients/{cid}/optim_step", json={}, headers=h)
        # a gateway that never saw the first attempt: nothing in memory, commands topic not read
        async with env.gateway(follow_commands=False) as c2:
            r2 = await c2.post(f"/api/v1/training_clients/{cid}/optim_step", json={}, headers=h)
            assert r2.status_code == 202 and r2.json() == r1.json()
            done = await wait_status(c2, t, r2.json()["future_id"])
            assert done["status"] == "completed" and done["result"]["step"] == 1
        cmd_id = command_id_for(t.tenant_id, "opt-1")
        assert (await _ids_on_topic(env)).count(cmd_id) == 2  # published twice, same id
        for _ in range(50):
            if sum(1 for x in trainer.seen if x.command_id == cmd_id) == 2:
                break
            await asyncio.sleep(0.1)
        assert trainer.executed.count(cmd_id) == 1  # executed once
        async with env.gateway() as c3:
            r = await c3.get(f"/api/v1/training_clients/{cid}/dp_metrics", headers=t.h)
            assert r.json()["steps"] == 1


async def test_key_known_only_from_the_ledger_reused_for_another_operation_is_409(env: Env) -> None:
    t = env.tenant()
    h = {**t.h, "Idempotency-Key": "k-ledger"}
    async with env.trainer():
        async with env.gateway(follow_commands=False) as c1:
            r = await c1.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=h)
            cid = r.json()["client_id"]
            await wait_status(c1, t, r.json()["future_id"])
        async with env.gateway(follow_commands=False) as c2:  # no memory, no command headers
            before = await env.command_count()
            r = await c2.post(f"/api/v1/training_clients/{cid}/optim_step", json={}, headers=h)
            assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
            assert await env.command_count() == before
