"""End to end: SDK → gateway → Kafka → trainer → ledger → projections, one real node.

The node runs in this process (gateway, trainer worker, projector) against the test
broker under its own topic prefix; the SDK talks to it over HTTP from a thread.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from tensafe.events.audit import verify_snapshot
from tensafe.events.export import collect
from tensafe.events.ledger import LedgerFollower
from tensafe.events.topics import topic_names

pytestmark = pytest.mark.integration


@pytest.fixture
async def node(broker, tmp_path):
    from tensafe.node.runtime import NodeOptions, run_node

    prefix = f"e{uuid.uuid4().hex[:8]}."
    opts = NodeOptions(
        data_dir=tmp_path / "node",
        bootstrap=broker.bootstrap,
        topic_prefix=prefix,
        partitions=2,
        test_mode=True,
    )
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_node(opts, stop, started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], timeout=180, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises the start-up error
    assert started.is_set(), "node did not start"
    info = json.loads((tmp_path / "node" / "node.json").read_text())
    info["api_key"] = Path(info["api_key_file"]).read_text().strip()
    info["prefix"] = prefix
    info["data_dir"] = tmp_path / "node"
    yield info
    stop.set()
    await asyncio.wait_for(task, 60)


def _client(info, api_key=None):
    from tensafe import ServiceClient

    return ServiceClient(base_url=info["gateway_url"], api_key=api_key or info["api_key"])


def _readme_example(info) -> dict:
    """The seed README's training example, as written (with a local model and batches)."""
    from tensafe import DPConfig, LoRAConfig, TrainingConfig

    service = _client(info)
    config = TrainingConfig(
        model_ref="tensafe-tiny-llama",
        lora_config=LoRAConfig(rank=16, alpha=32),
        dp_config=DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=8.0),
        batch_size=4,
    )
    tc = service.create_training_client(config)
    dataloader = [
        {
            "input_ids": [[5, 6, 7, 8, 9, 10]] * 4,
            "attention_mask": [[1] * 6] * 4,
            "labels": [[5, 6, 7, 8, 9, 10]] * 4,
        }
        for _ in range(3)
    ]
    for batch in dataloader:
        future = tc.forward_backward(
            {
                "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"],
                "labels": batch["labels"],
            }
        )
        result = future.result()
        tc.optim_step()
    metrics = tc.get_dp_metrics()
    saved = tc.save_state("final-checkpoint")
    sample = tc.sample(prompts=["Patient"], max_tokens=8, temperature=0.7, seed=3)
    logs = tc.get_audit_logs(limit=100)
    service.close()
    return {
        "client_id": tc.client_id,
        "fb": result,
        "metrics": metrics,
        "saved": saved,
        "sample": sample,
        "logs": logs,
    }


async def test_seed_readme_example_runs_through_the_log(node):
    out = await asyncio.to_thread(_readme_example, node)
    m = out["metrics"]
    # No declared dataset size: accounted with q = 1 (no amplification), and it says so.
    # At sigma = 1 a third step would cost epsilon 9.0 > 8: it is refused before it runs.
    assert m.guarantee == "unamplified" and m.sample_rate == 1.0
    assert m.steps == 2 and 0 < m.epsilon_spent < 8.0 and m.delta == 1e-5
    assert out["fb"].num_samples == 4 and out["fb"].clip is not None
    assert out["saved"].artifact_id.startswith("art_") and out["saved"].encryption.algorithm == "AES-256-GCM"
    assert out["sample"].samples[0].finish_reason in {"length", "stop", "eos"}
    types = [e.event_type for e in out["logs"].entries]
    assert "TrainingClientCreated" in " ".join(types) and "OptimStepApplied" in " ".join(types)
    assert "BudgetRefused" in " ".join(types)
    report = verify_snapshot(await collect(node["bootstrap"], node["prefix"]))
    assert report.ok, report.errors


def _tenant_isolation(info) -> None:
    from tensafe.errors import NotFoundError
    from tensafe.gateway.tenants import TenantStore
    from tensafe.node.runtime import open_keyring

    keyring = open_keyring(Path(info["data_dir"]))
    _, other_key = TenantStore(Path(info["data_dir"]) / "tenants.json").create_tenant(
        "other", keyring=keyring
    )
    from tensafe import DPConfig, LoRAConfig, TrainingConfig

    mine = _client(info)
    tc = mine.create_training_client(
        TrainingConfig(
            model_ref="tensafe-tiny-llama",
            lora_config=LoRAConfig(rank=4, alpha=8),
            dp_config=DPConfig(sampling="client_batches", dataset_size=100, expected_batch_size=2),
            batch_size=2,
        )
    )
    fut = tc.forward_backward({"input_ids": [[1, 2, 3]] * 2, "labels": [[1, 2, 3]] * 2})
    fut.result()
    theirs = _client(info, other_key)
    assert tc.client_id not in [c.client_id for c in theirs.list_training_clients()]
    with httpx.Client(base_url=info["gateway_url"], headers={"Authorization": f"Bearer {other_key}"}) as h:
        for method, path, body in [
            ("GET", f"/api/v1/training_clients/{tc.client_id}", None),
            ("GET", f"/api/v1/training_clients/{tc.client_id}/dp_metrics", None),
            ("GET", f"/api/v1/training_clients/{tc.client_id}/audit_logs", None),
            ("POST", f"/api/v1/training_clients/{tc.client_id}/optim_step", {}),
            ("GET", f"/api/v1/futures/{fut.future_id}", None),
        ]:
            r = h.request(method, path, json=body)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
    try:
        theirs.get_training_client(tc.client_id).status()
        raise AssertionError("cross-tenant read succeeded")
    except NotFoundError:
        pass
    mine.close()
    theirs.close()


async def test_tenants_cannot_see_or_touch_each_other(node):
    await asyncio.to_thread(_tenant_isolation, node)


def _retry_through_restarted_gateway(info) -> tuple[str, dict, dict]:
    from tensafe import DPConfig, LoRAConfig, TrainingConfig

    svc = _client(info)
    tc = svc.create_training_client(
        TrainingConfig(
            model_ref="tensafe-tiny-llama",
            lora_config=LoRAConfig(rank=4, alpha=8),
            dp_config=DPConfig(sampling="client_batches", dataset_size=100, expected_batch_size=2),
            batch_size=2,
        )
    )
    tc.forward_backward({"input_ids": [[1, 2, 3]] * 2, "labels": [[1, 2, 3]] * 2}).result()
    headers = {"Authorization": f"Bearer {info['api_key']}", "Idempotency-Key": "retry-step-1"}
    body = {"adam_params": {"learning_rate": 1e-3}}
    with httpx.Client(base_url=info["gateway_url"], headers=headers, timeout=60) as h:
        first = h.post(f"/api/v1/training_clients/{tc.client_id}/optim_step", json=body).json()
    svc.close()
    return tc.client_id, first, body


async def test_retry_after_gateway_restart_applies_once(node):
    """The first gateway accepted the request; the client retries against a fresh gateway
    instance (the first one 'died' before answering). Same idempotency key: one step."""
    from tensafe.gateway.app import create_app
    from tensafe.gateway.settings import Settings
    from tensafe.node.runtime import open_keyring

    client_id, first, body = await asyncio.to_thread(_retry_through_restarted_gateway, node)
    settings = Settings(
        bootstrap=node["bootstrap"],
        keyring=open_keyring(Path(node["data_dir"])),
        tenants_path=Path(node["data_dir"]) / "tenants.json",
        topic_prefix=node["prefix"],
        partitions=2,
    )
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {node['api_key']}", "Idempotency-Key": "retry-step-1"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw2", headers=headers, timeout=60
        ) as h:
            again = (await h.post(f"/api/v1/training_clients/{client_id}/optim_step", json=body)).json()
            assert again["future_id"] == first["future_id"]
            done = (await h.get(f"/api/v1/futures/{again['future_id']}?wait=30")).json()
            assert done["status"] == "completed", done
    names = topic_names(node["prefix"])
    steps = 0
    for p in range(2):
        async for e in LedgerFollower(node["bootstrap"], p, topic=names.ledger).read_to_end():
            if e.envelope.client_id == client_id and e.envelope.short_type == "OptimStepApplied":
                steps += 1
    assert steps == 1


def _train_and_package(info, recipient_public: bytes) -> tuple[str, bytes, object]:
    from tensafe import DPConfig, LoRAConfig, TrainingConfig

    svc = _client(info)
    tc = svc.create_training_client(
        TrainingConfig(
            model_ref="tensafe-tiny-llama",
            lora_config=LoRAConfig(rank=4, alpha=8),
            dp_config=DPConfig(
                sampling="client_batches", dataset_size=1000, expected_batch_size=2, target_epsilon=50.0
            ),
            batch_size=2,
        )
    )
    for _ in range(2):
        tc.forward_backward({"input_ids": [[4, 5, 6, 7]] * 2, "labels": [[4, 5, 6, 7]] * 2}).result()
        tc.optim_step({"learning_rate": 1e-2}).result()
    pkg = tc.create_package([recipient_public], name="release-1")
    data = svc.download_package(pkg.artifact_id)
    with httpx.Client(
        base_url=info["gateway_url"], headers={"Authorization": f"Bearer {info['api_key']}"}
    ) as h:
        saved = tc.save_state("not-downloadable")
        r = h.get(f"/api/v1/artifacts/{saved.artifact_id}/content")
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", (
            r.text
        )  # checkpoints stay inside
    svc.close()
    return tc.client_id, data, pkg


async def test_package_leaves_the_service_signed_encrypted_and_provable(node, tmp_path):
    from tensafe.crypto.kem import HybridKemPrivateKey
    from tensafe.crypto.signing import HybridPublicKey
    from tensafe.events.node_config import SIGNING_PUBLIC
    from tensafe.tssp import PackageError, unpack_package, verify_package

    recipient = HybridKemPrivateKey.generate()
    client_id, data, pkg = await asyncio.to_thread(
        _train_and_package, node, recipient.public_key().to_bytes()
    )
    assert len(data) == pkg.size and pkg.epsilon > 0
    node_key = HybridPublicKey.from_bytes((Path(node["data_dir"]) / SIGNING_PUBLIC).read_bytes())
    trusted = {node_key.key_id: node_key}
    verified = verify_package(data, trusted)
    assert verified.provenance["training_client_id"] == client_id
    assert verified.dp_certificate["guarantee"] == "conditional_on_client_sampling"
    assert len(verified.inclusion_proofs) >= 2  # creation + steps, against a signed checkpoint
    assert all(p.verify_path() for p in verified.inclusion_proofs)
    out = await asyncio.to_thread(unpack_package, data, recipient, tmp_path / "adapter", trusted)
    assert (out.adapter_dir / "adapter_model.safetensors").exists()
    with pytest.raises(PackageError) as wrong:
        unpack_package(data, HybridKemPrivateKey.generate(), tmp_path / "nope", trusted)
    assert wrong.value.code == "wrong_recipient"


def _keys(info, action: str, tenant_id: str) -> int:
    from tensafe.cli import build_parser

    argv = ["keys", action, "--tenant", tenant_id, "--data-dir", str(info["data_dir"]), "--timeout", "90"]
    if action == "shred":
        argv += ["--yes", "--reason", "erasure request"]
    args = build_parser().parse_args(argv)
    return args.func(args)


def _tenant_with_a_client(info) -> tuple[str, str, str]:
    from tensafe import DPConfig, LoRAConfig, TrainingConfig
    from tensafe.gateway.tenants import TenantStore
    from tensafe.node.runtime import open_keyring

    keyring = open_keyring(Path(info["data_dir"]))
    tenant_id, key = TenantStore(Path(info["data_dir"]) / "tenants.json").create_tenant(
        "leaving", keyring=keyring
    )
    svc = _client(info, key)
    tc = svc.create_training_client(
        TrainingConfig(
            model_ref="tensafe-tiny-llama",
            lora_config=LoRAConfig(rank=4, alpha=8),
            dp_config=DPConfig(sampling="client_batches", dataset_size=100, expected_batch_size=2),
            batch_size=2,
        )
    )
    tc.forward_backward({"input_ids": [[1, 2, 3]] * 2, "labels": [[1, 2, 3]] * 2}).result()
    svc.close()
    return tenant_id, key, tc.client_id


async def test_key_rotation_and_shredding_are_ledger_events(node):
    from tensafe.errors import TenSafeError

    tenant_id, key, client_id = await asyncio.to_thread(_tenant_with_a_client, node)
    assert await asyncio.to_thread(_keys, node, "rotate", tenant_id) == 0
    assert await asyncio.to_thread(_keys, node, "shred", tenant_id) == 0

    def after_shred() -> str:
        svc = _client(node, key)
        try:
            tc = svc.get_training_client(client_id)
            tc.forward_backward({"input_ids": [[1, 2, 3]] * 2, "labels": [[1, 2, 3]] * 2}).result()
        except TenSafeError as exc:
            return exc.code
        finally:
            svc.close()
        return "succeeded"

    # nothing of the tenant can be sealed or opened any more: refused before anything is published
    assert await asyncio.to_thread(after_shred) == "forbidden"
    snap = await collect(node["bootstrap"], node["prefix"])
    from tensafe.events.envelope import decode_envelope

    types = [decode_envelope(raw).short_type for recs in snap.ledger.values() for _, raw in recs]
    assert "KeyRotated" in types and "TenantShredded" in types and "TenantKeyCreated" in types
    assert verify_snapshot(snap).ok  # the chain still verifies: it holds only ciphertext
