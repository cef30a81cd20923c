"""Sensitive fields are ciphertext before they reach Kafka, and only the owner's key opens them."""

from __future__ import annotations

import pytest
from gateway_harness import Env, wait_status
from tensafe.crypto.errors import CryptoError
from tensafe.crypto.sealed import open_sealed
from tensafe.events import codec, kafka_io
from tensafe.events.commands import Command

pytestmark = pytest.mark.integration

SECRET_TEXT = "PATIENT-RECORD-7f3a-very-private"
TOKENS = [4242, 1717, 4242, 1717, 4242, 1717, 4242, 1717]


async def _raw_ledger(env: Env) -> bytes:
    out = b""
    for p in range(4):
        async for rec in kafka_io.read_partition(env.bootstrap, env.topics.ledger, p):
            out += rec.value
    return out


async def test_commands_and_ledger_hold_no_clear_text(env: Env) -> None:
    t, other = env.tenant("owner"), env.tenant("other")
    async with env.trainer(), env.gateway() as c:
        r = await c.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=t.h)
        cid = r.json()["client_id"]
        await wait_status(c, t, r.json()["future_id"])
        r = await c.post(
            f"/api/v1/training_clients/{cid}/forward_backward",
            json={"batch": {"input_ids": [TOKENS]}},
            headers=t.h,
        )
        await wait_status(c, t, r.json()["future_id"])
        r = await c.post(
            f"/api/v1/training_clients/{cid}/forward_backward",
            json={"data": [{"tokens": TOKENS, "target_tokens": TOKENS}]},
            headers=t.h,
        )
        await wait_status(c, t, r.json()["future_id"])
        r = await c.post(
            f"/api/v1/training_clients/{cid}/sample",
            json={"prompts": [SECRET_TEXT], "stop": [SECRET_TEXT + "-stop"]},
            headers=t.h,
        )
        s = await wait_status(c, t, r.json()["future_id"])
        assert s["result"]["samples"][0]["completion"] == "completion 0"  # the owner reads it in clear
        r = await c.post(
            f"/api/v1/training_clients/{cid}/sample", json={"prompt_tokens": [TOKENS]}, headers=t.h
        )
        await wait_status(c, t, r.json()["future_id"])
        r = await c.post(
            "/api/v1/datasets", json={"name": "d", "records": [{"text": SECRET_TEXT}]}, headers=t.h
        )
        assert r.status_code == 201
        r = await c.post(
            "/api/v1/datasets", json={"name": "d2", "token_records": [{"input_ids": TOKENS}]}, headers=t.h
        )
        assert r.status_code == 201

    records = await env.command_records()
    raw = b"".join(r.value for r in records)
    ledger = await _raw_ledger(env)
    # the clear-text forms that would appear if a field were not sealed
    clear_batch = codec.encode_body("tensafe.data.TokenBatch", {"input_ids": [TOKENS]})
    token_run = clear_batch[1:-3]  # the zig-zag varints of the token row itself
    assert len(token_run) >= 16
    for blob in (raw, ledger):
        assert SECRET_TEXT.encode() not in blob
        assert token_run not in blob
        assert b"completion 0" not in blob
    # every sealed field names a DEK and opens only under the owner's tenant and the command's context
    sealed_fields = {
        "ForwardBackward": "batch_ciphertext",
        "Sample": "prompts_ciphertext",
        "RegisterDataset": "records_ciphertext",
    }
    n = 0
    for rec in records:
        cmd = Command.decode(rec.value)
        field = sealed_fields.get(cmd.command_type)
        if field is None:
            continue
        n += 1
        blob = cmd.payload[field]
        assert open_sealed(env.keyring, t.tenant_id, cmd.command_type, blob)
        with pytest.raises(CryptoError):
            open_sealed(env.keyring, other.tenant_id, cmd.command_type, blob)
        with pytest.raises(CryptoError):
            open_sealed(env.keyring, t.tenant_id, "OptimStep", blob)
    assert n == 6
