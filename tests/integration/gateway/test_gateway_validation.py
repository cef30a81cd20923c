"""Bad input gets a precise 4xx and publishes nothing; no input ever gets a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from gateway_harness import Env, Tenant
from tensafe.gateway.settings import DEFAULT_MODELS, ModelSpec

pytestmark = pytest.mark.integration

V = DEFAULT_MODELS[0].vocab_size
CTX = DEFAULT_MODELS[0].max_context_length
OK_FB = {"batch": {"input_ids": [[1, 2, 3], [4, 5]]}}


def fb(**batch):
    return {"batch": {"input_ids": [[1, 2, 3], [4, 5]], **batch}}


# (endpoint key, body, expected status, expected code, expected first error path or parameter)
CASES = [
    ("fb", "{bad", 400, "invalid_request", None),
    ("fb", "[1, 2]", 400, "invalid_request", None),
    ("fb", '{"batch": {"input_ids": [[1]]}, "return_logprobs": NaN}', 400, "invalid_request", None),
    ("fb", '{"a": 1, "a": }', 400, "invalid_request", None),
    ("fb", {}, 400, "schema_violation", ""),
    ("fb", {**OK_FB, "data": [{"tokens": [1], "target_tokens": [2]}]}, 400, "schema_violation", ""),
    ("fb", {**OK_FB, "extra": 1}, 400, "schema_violation", "extra"),
    ("fb", {"batch": {"input_ids": [["1"]]}}, 400, "schema_violation", "batch.input_ids[0][0]"),
    ("fb", {"batch": {"input_ids": [[1, 1.5]]}}, 400, "schema_violation", "batch.input_ids[0][1]"),
    ("fb", {"batch": {"input_ids": [[True]]}}, 400, "schema_violation", "batch.input_ids[0][0]"),
    ("fb", {"batch": {"input_ids": [[1, -3]]}}, 400, "schema_violation", "batch.input_ids[0][1]"),
    ("fb", {"batch": {"input_ids": [[1, 2], [3, V]]}}, 400, "schema_violation", "batch.input_ids[1][1]"),
    ("fb", {"batch": {"input_ids": [[2**40]]}}, 400, "schema_violation", "batch.input_ids[0][0]"),
    ("fb", {"batch": {"input_ids": [[1]] * 257}}, 400, "schema_violation", "batch.input_ids"),
    ("fb", {"batch": {"input_ids": [[1] * (CTX + 1)]}}, 400, "schema_violation", "batch.input_ids[0]"),
    ("fb", {"batch": {"input_ids": [[1], []]}}, 400, "schema_violation", "batch.input_ids[1]"),
    ("fb", {"batch": {"input_ids": []}}, 400, "schema_violation", "batch.input_ids"),
    ("fb", {"batch": {"input_ids": "abc"}}, 400, "schema_violation", "batch.input_ids"),
    ("fb", {"batch": [1, 2]}, 400, "schema_violation", "batch"),
    ("fb", fb(labels=[[1, 2, 3]]), 400, "schema_violation", "batch.labels"),
    ("fb", fb(labels=[[1, 2, 3], [4]]), 400, "schema_violation", "batch.labels[1]"),
    ("fb", fb(labels=[[-100, 2, -7], [4, 5]]), 400, "schema_violation", "batch.labels[0][2]"),
    ("fb", fb(attention_mask=[[1, 2, 1], [1, 1]]), 400, "schema_violation", "batch.attention_mask[0][1]"),
    (
        "fb",
        {"data": [{"tokens": [1, 2], "target_tokens": [2]}]},
        400,
        "schema_violation",
        "data[0].target_tokens",
    ),
    (
        "fb",
        {"data": [{"tokens": [1], "target_tokens": [2], "weights": [1.0, 1.0]}]},
        400,
        "schema_violation",
        "data[0].weights",
    ),
    (
        "fb",
        {"data": [{"tokens": [1], "target_tokens": [V]}]},
        400,
        "schema_violation",
        "data[0].target_tokens[0]",
    ),
    ("fb", {"data": [{"tokens": [1]}]}, 400, "schema_violation", "data[0].target_tokens"),
    ("fb", {**OK_FB, "loss_fn": "mse"}, 400, "schema_violation", "loss_fn"),
    ("fb", {**OK_FB, "return_logprobs": "yes"}, 400, "schema_violation", "return_logprobs"),
    ("create", {}, 400, "schema_violation", "model_ref"),
    ("create", {"model_ref": "gpt-9"}, 400, "schema_violation", "model_ref"),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "dp_config": {"sampling": "poisson"}},
        400,
        "schema_violation",
        "dp_config.sampling",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "dp_config": {"noise_multiplier": 0.0}},
        400,
        "schema_violation",
        "dp_config.noise_multiplier",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "dp_config": {"target_delta": 1.0}},
        400,
        "schema_violation",
        "dp_config.target_delta",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "dp_config": {"accountant": "gdp"}},
        400,
        "schema_violation",
        "dp_config.accountant",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "lora_config": {"rank": 0}},
        400,
        "schema_violation",
        "lora_config.rank",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "lora_config": {"dropout": 1.0}},
        400,
        "schema_violation",
        "lora_config.dropout",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "lora_config": {"dropout": 0.1}},
        400,
        "schema_violation",
        "lora_config.dropout",
    ),
    ("create", {"model_ref": "tensafe-tiny-llama", "batch_size": 257}, 400, "schema_violation", "batch_size"),
    ("create", {"model_ref": "tensafe-tiny-llama", "seed": 2**64}, 400, "schema_violation", "seed"),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "metadata": {f"k{i}": i for i in range(33)}},
        400,
        "schema_violation",
        "metadata",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "metadata": {"k": {"nested": 1}}},
        400,
        "schema_violation",
        "metadata",
    ),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "metadata": {"bad key": 1}},
        400,
        "schema_violation",
        "metadata",
    ),
    ("create", {"model_ref": "tensafe-tiny-llama", "dataset_id": "ds_unknown"}, 404, "not_found", None),
    (
        "create",
        {"model_ref": "tensafe-tiny-llama", "dataset_id": "../etc/passwd"},
        400,
        "schema_violation",
        "dataset_id",
    ),
    ("sample", {"prompts": ["a"], "prompt_tokens": [[1]]}, 400, "schema_violation", ""),
    ("sample", {"prompts": []}, 400, "schema_violation", "prompts"),
    ("sample", {"prompts": ["a"] * 65}, 400, "schema_violation", "prompts"),
    ("sample", {"prompts": ["a"], "num_samples": 17}, 400, "schema_violation", "num_samples"),
    ("sample", {"prompts": ["a"], "max_tokens": 0}, 400, "schema_violation", "max_tokens"),
    ("sample", {"prompts": ["a"], "top_k": 0}, 400, "schema_violation", "top_k"),
    ("sample", {"prompts": ["a"], "top_p": 0}, 400, "schema_violation", "top_p"),
    ("sample", {"prompts": ["a"], "temperature": -1}, 400, "schema_violation", "temperature"),
    (
        "sample",
        {"prompt_tokens": [[1] * 2000], "max_tokens": 100},
        400,
        "schema_violation",
        "prompt_tokens[0]",
    ),
    ("sample", {"prompts": ["a"], "stop": [13]}, 400, "schema_violation", "stop[0]"),
    ("optim", {"adam_params": {"learning_rate": -1}}, 400, "schema_violation", "adam_params.learning_rate"),
    ("optim", {"adam_params": "fast"}, 400, "schema_violation", "adam_params"),
    ("optim", {"adam_params": {"beta1": 1.0}}, 400, "schema_violation", "adam_params.beta1"),
    ("train", {}, 409, "conflict", None),
    ("save", {"name": "bad name!"}, 400, "schema_violation", "name"),
    ("save", {"include_optimizer": 1}, 400, "schema_violation", "include_optimizer"),
    ("load", {}, 400, "schema_violation", "artifact_id"),
    ("load", {"artifact_id": "art_nope"}, 404, "not_found", None),
    ("dataset", {"name": "d"}, 400, "schema_violation", ""),
    ("dataset", {"records": [{"text": "x"}]}, 400, "schema_violation", "name"),
    ("dataset", {"name": "d", "records": [{"text": 5}]}, 400, "schema_violation", "records[0].text"),
    ("dataset", {"name": "d", "records": []}, 400, "schema_violation", "records"),
    (
        "dataset",
        {"name": "d", "token_records": [{"input_ids": [1, 2], "labels": [1, -5]}]},
        400,
        "schema_violation",
        "token_records[0].labels",
    ),
    ("dataset", {"name": "-d", "records": [{"text": "x"}]}, 400, "schema_violation", "name"),
    ("unknown_client", OK_FB, 404, "not_found", None),
    ("weird_client", OK_FB, 404, "not_found", None),
]


@pytest.fixture
async def world(env: Env) -> AsyncIterator[tuple[Env, Tenant, object, str]]:
    t = env.tenant()
    async with env.gateway() as c:
        r = await c.post("/api/v1/training_clients", json={"model_ref": "tensafe-tiny-llama"}, headers=t.h)
        assert r.status_code == 202
        yield env, t, c, r.json()["client_id"]


def _url(kind: str, cid: str) -> str:
    tc = f"/api/v1/training_clients/{cid}"
    return {
        "fb": tc + "/forward_backward",
        "create": "/api/v1/training_clients",
        "sample": tc + "/sample",
        "optim": tc + "/optim_step",
        "train": tc + "/train_step",
        "save": tc + "/save_state",
        "load": tc + "/load_state",
        "dataset": "/api/v1/datasets",
        "unknown_client": "/api/v1/training_clients/tc_00000000000000000000000000000000/forward_backward",
        "weird_client": "/api/v1/training_clients/%2e%2e%2f%00x/forward_backward",
    }[kind]


async def test_bad_bodies_get_precise_errors_and_publish_nothing(world) -> None:
    env, t, c, cid = world
    before = await env.command_count()
    failures = []
    for kind, body, status, code, path in CASES:
        content = body if isinstance(body, str) else json.dumps(body)
        r = await c.post(
            _url(kind, cid), content=content, headers={**t.h, "Content-Type": "application/json"}
        )
        err = r.json().get("error", {})
        got_path = (err.get("details", {}).get("errors") or [{}])[0].get("path")
        if r.status_code != status or err.get("code") != code or (path is not None and got_path != path):
            failures.append(
                (kind, str(body)[:80], r.status_code, err.get("code"), got_path, err.get("message"))
            )
        assert err.get("request_id") == r.headers["x-request-id"]
    assert not failures, "\n".join(map(str, failures))
    assert await env.command_count() == before


async def test_bad_headers_queries_and_routes(world) -> None:
    env, t, c, cid = world
    before = await env.command_count()
    url = _url("fb", cid)
    checks = [
        (
            await c.post(url, content=json.dumps(OK_FB), headers={**t.h, "Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (
            await c.post(
                url,
                content=json.dumps(OK_FB),
                headers={**t.h, "Content-Type": "application/json; charset=latin-1"},
            ),
            415,
            "unsupported_media_type",
        ),
        (
            await c.post(url, content=b"\xff\xfe{}", headers={**t.h, "Content-Type": "application/json"}),
            400,
            "invalid_request",
        ),
        (
            await c.post(url, json=OK_FB, headers={**t.h, "Idempotency-Key": "has space"}),
            400,
            "invalid_request",
        ),
        (
            await c.post(url, json=OK_FB, headers={**t.h, "Idempotency-Key": "a", "X-Idempotency-Key": "b"}),
            400,
            "invalid_request",
        ),
        (await c.get("/api/v1/futures/fut_0000", params={"wait": "-1"}, headers=t.h), 400, "invalid_request"),
        (
            await c.get("/api/v1/futures/fut_0000", params={"wait": "soon"}, headers=t.h),
            400,
            "invalid_request",
        ),
        (
            await c.get("/api/v1/futures/fut_0000", params={"wait": "nan"}, headers=t.h),
            400,
            "invalid_request",
        ),
        (await c.get("/api/v1/futures/fut_0000", headers=t.h), 404, "not_found"),
        (await c.get("/api/v1/futures/nonsense", headers=t.h), 404, "not_found"),
        (await c.get("/api/v1/futures", headers=t.h), 400, "invalid_request"),
        (
            await c.get("/api/v1/futures", params={"ids": ",".join(["fut_x"] * 101)}, headers=t.h),
            400,
            "invalid_request",
        ),
        (await c.get("/api/v1/training_clients", params={"limit": "0"}, headers=t.h), 400, "invalid_request"),
        (
            await c.get(f"/api/v1/training_clients/{cid}/audit_logs", params={"limit": "1001"}, headers=t.h),
            400,
            "invalid_request",
        ),
        (
            await c.get(f"/api/v1/training_clients/{cid}/audit_logs", params={"after_seq": "x"}, headers=t.h),
            400,
            "invalid_request",
        ),
        (await c.post("/api/v1/futures/fut_x/cancel", json={"x": 1}, headers=t.h), 400, "schema_violation"),
        (await c.get("/api/v1/nothing-here", headers=t.h), 404, "not_found"),
        (await c.put(url, json=OK_FB, headers=t.h), 405, "method_not_allowed"),
        (await c.delete("/api/v1/training_clients", headers=t.h), 405, "method_not_allowed"),
    ]
    bad = [
        (r.request.method, str(r.request.url), r.status_code, r.text[:200])
        for r, s, code in checks
        if r.status_code != s or r.json()["error"]["code"] != code
    ]
    assert not bad, bad
    r = await c.delete("/api/v1/training_clients", headers=t.h)
    assert (
        sorted(r.json()["error"]["details"]["allow"]) == ["GET", "HEAD", "POST"]
        and "POST" in r.headers["allow"]
    )
    assert await env.command_count() == before


async def test_oversize_bodies_are_413_by_length_and_by_stream(world) -> None:
    env, t, c, cid = world
    before = await env.command_count()
    limit = 8 * 1024 * 1024
    big = b'{"batch": {"input_ids": [[' + b"1," * (limit // 2) + b"1]]}}"
    r = await c.post(_url("fb", cid), content=big, headers={**t.h, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["details"] == {"limit_bytes": limit}

    async def chunks():  # no Content-Length: chunked; the limit applies to what arrives
        yield b'{"batch": {"input_ids": [['
        for _ in range(limit // (64 * 1024) + 2):
            yield b"1," * (32 * 1024)
        yield b"1]]}}"

    r = await c.post(_url("fb", cid), content=chunks(), headers={**t.h, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # a lying Content-Length is no way around it either
    r = await c.post(
        _url("fb", cid),
        content=big,
        headers={**t.h, "Content-Type": "application/json", "Content-Length": "10"},
    )
    assert r.status_code in (400, 413)
    # datasets may be bigger than 8 MiB, but one command must fit one Kafka record
    records = [{"text": "x" * 1000}] * 9000
    r = await c.post("/api/v1/datasets", json={"name": "big", "records": records}, headers=t.h)
    assert r.status_code == 413 and r.json()["error"]["details"]["reason"] == "command_too_large"
    assert await env.command_count() == before


def test_model_limits_from_a_model_directory(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        '{"max_position_embeddings": 1024, "vocab_size": 32000, "hidden_size": 8}'
    )
    spec = ModelSpec.from_model_dir("m", tmp_path)
    assert (spec.max_context_length, spec.vocab_size) == (1024, 32000)
