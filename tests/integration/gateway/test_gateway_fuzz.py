"""Hypothesis-driven fuzz of request bodies, against a real uvicorn server and broker.

Never a 5xx; every error has the documented shape; and exactly the 2xx answers
published something (the commands topic grows by their number, no more).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import PARTITIONS, env_for, run_sync, served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensafe.events.topics import ensure_topics

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "120"))
CODES = {
    "invalid_request", "schema_violation", "unauthenticated", "forbidden", "not_found", "method_not_allowed",
    "conflict", "idempotency_conflict", "idempotency_in_progress", "payload_too_large", "unsupported_media_type",
    "budget_exceeded",
}  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
    max_leaves=30,
)
tokens = st.lists(st.integers(min_value=-5, max_value=9000), min_size=0, max_size=6)

VALID = {
    "forward_backward": {
        "batch": {"input_ids": [[1, 2, 3]], "labels": [[-100, 2, 3]]},
        "return_logprobs": False,
    },
    "optim_step": {"adam_params": {"learning_rate": 1e-4}},
    "sample": {"prompts": ["hello"], "max_tokens": 8, "num_samples": 2},
    "save_state": {"name": "ckpt-1", "include_optimizer": True},
    "create": {
        "model_ref": "tensafe-tiny-llama",
        "lora_config": {"rank": 8},
        "dp_config": {"dataset_size": 100},
    },
    "dataset": {"name": "ds", "records": [{"text": "a"}]},
}
FIELDS = sorted(
    {k for body in VALID.values() for k in body}
    | {"data", "prompt_tokens", "batch_size", "metadata", "seed", "token_records", "artifact_id"}
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A valid body with a few fields replaced, added or removed."""
    body = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "add", "drop", "tokens"]))
        if op == "replace" and body:
            body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
        elif op == "add":
            body[draw(st.sampled_from(FIELDS) | st.text(max_size=8))] = draw(json_values)
        elif op == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif op == "tokens":
            body["batch"] = {"input_ids": draw(st.lists(tokens, max_size=4))}
            if draw(st.booleans()):
                body["batch"]["labels"] = draw(st.lists(tokens, max_size=4))
    return body


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory) -> Iterator[dict[str, Any]]:
    prefix = f"t{uuid.uuid4().hex[:12]}."
    run_sync(ensure_topics(broker.bootstrap, partitions=PARTITIONS, topic_prefix=prefix))
    env = env_for(broker.bootstrap, prefix, Path(tmp_path_factory.mktemp("fuzz")))
    t = env.tenant()
    with served(env.settings()) as base, httpx.Client(base_url=base, headers=t.h, timeout=30) as http:
        r = http.post("/api/v1/training_clients", json=VALID["create"])
        assert r.status_code == 202
        world = {
            "env": env,
            "http": http,
            "cid": r.json()["client_id"],
            "accepted": 1,
            "base": base,
            "key": t.key,
        }
        world["start"] = run_sync(env.command_count()) - 1
        yield world
        # the ledger of truth: one command per 2xx POST, nothing for the rest
        assert run_sync(env.command_count()) - world["start"] == world["accepted"]


def _check(world: dict[str, Any], r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:500])
    if r.status_code == 400 and r.headers.get("content-type", "").startswith("text/plain"):
        # Malformed HTTP (e.g. a control byte in a header) is refused by the server's HTTP
        # parser before the app runs: a plain 400, nothing published, nothing to identify.
        assert "Invalid HTTP request" in r.text, r.text
        return
    assert r.headers.get("x-request-id")
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] in CODES and isinstance(err["message"], str) and isinstance(err["details"], dict)
    elif r.request.method == "POST":
        world["accepted"] += 1


def _endpoint(world: dict[str, Any], name: str) -> str:
    if name in ("create",):
        return "/api/v1/training_clients"
    if name == "dataset":
        return "/api/v1/datasets"
    return f"/api/v1/training_clients/{world['cid']}/{name}"


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), data=st.data())
def test_fuzz_mutated_bodies(server: dict[str, Any], name: str, data: st.DataObject) -> None:
    body = data.draw(mutated(VALID[name]))
    r = server["http"].post(_endpoint(server, name), json=body)
    _check(server, r)


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), body=json_values)
def test_fuzz_arbitrary_json(server: dict[str, Any], name: str, body: Any) -> None:
    r = server["http"].post(_endpoint(server, name), json=body)
    _check(server, r)


@FUZZ
@given(
    name=st.sampled_from(sorted(VALID)),
    raw=st.binary(max_size=200),
    ctype=st.sampled_from(
        ["application/json", "text/plain", "application/json; charset=utf-16", "", "application/x-protobuf"]
    ),
    key=st.none() | st.text(max_size=30),
)
def test_fuzz_raw_bytes_and_headers(
    server: dict[str, Any], name: str, raw: bytes, ctype: str, key: str | None
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    if key is not None:
        try:
            key.encode("ascii")
            headers["Idempotency-Key"] = key
        except UnicodeEncodeError:
            pass
    try:
        r = server["http"].post(_endpoint(server, name), content=raw, headers=headers)
    except (httpx.LocalProtocolError, ValueError):
        return  # httpx itself refuses to send an illegal header value
    _check(server, r)


@FUZZ
@given(
    path=st.sampled_from(
        [
            "/api/v1/futures/{x}",
            "/api/v1/training_clients/{x}",
            "/api/v1/training_clients/{x}/audit_logs",
            "/api/v1/artifacts/{x}",
            "/api/v1/datasets/{x}",
            "/api/v1/futures",
        ]
    ),  # fmt: skip
    x=st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), max_size=40),
    params=st.dictionaries(
        st.sampled_from(["wait", "limit", "cursor", "after_seq", "ids", "client_id"]),
        st.text(max_size=12),
        max_size=3,
    ),
)
def test_fuzz_reads(server: dict[str, Any], path: str, x: str, params: dict[str, str]) -> None:
    if "wait" in params:
        params["wait"] = params["wait"][:1]  # keep long polls short
    try:
        r = server["http"].get(path.replace("{x}", httpx.URL(x).path or "x"), params=params)
    except (httpx.InvalidURL, httpx.LocalProtocolError, ValueError):
        return
    _check(server, r)
