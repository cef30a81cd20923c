"""TenSafe REST requests (validated) -> ``Prepared`` commands.

Each builder fills the command schema of ``schemas/<Type>.cmd.avsc`` (defaults of
API.md applied), seals the sensitive part as its ``tensafe.data`` record, and
returns the 2xx body. A second API surface writes its own builders producing the
same commands.
"""

from __future__ import annotations

from typing import Any

from tensafe.events.commands import Command
from tensafe.gateway import ids
from tensafe.gateway import validation as v
from tensafe.gateway.errors import one_violation
from tensafe.gateway.futures import API_TYPES
from tensafe.gateway.readmodel import ClientRec, DatasetRec
from tensafe.gateway.service import Prepared, now_ms
from tensafe.gateway.settings import ModelSpec


def _accepted(cmd: Command) -> dict[str, Any]:
    return {
        "future_id": ids.future_id_of(cmd.command_id),
        "type": API_TYPES[cmd.command_type],
        "client_id": cmd.client_id,
        "status": "pending",
    }


def create_training_client(
    tenant_id: str, cmd_id: str, req: v.CreateTrainingClient, spec: ModelSpec, dataset: DatasetRec | None
) -> Prepared:
    lora = req.lora_config or v.LoraConfig()
    dp = req.dp_config or v.DPConfig()
    batch_size = req.batch_size or 8
    sampling = dp.sampling or ("poisson" if req.dataset_id else "client_batches")
    dataset_size = dp.dataset_size
    if sampling == "poisson" and dataset is not None:
        dataset_size = dataset.num_records  # q = expected_batch_size / num_records
    metadata = req.metadata or {}
    payload = {
        "model_ref": req.model_ref,
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": list(lora.target_modules or spec.default_target_modules),
        "dp_enabled": dp.enabled,
        "noise_multiplier": dp.noise_multiplier,
        "max_grad_norm": dp.max_grad_norm,
        "target_epsilon": dp.target_epsilon,
        "target_delta": dp.target_delta,
        "accountant": dp.accountant,
        "sampling_mode": sampling,
        "dataset_id": req.dataset_id,
        "dataset_size": dataset_size,
        "expected_batch_size": dp.expected_batch_size or batch_size,
        "seed": req.seed,
        "metadata_json": ids.canonical_json(metadata).decode(),
    }
    client_id = ids.client_id_for(cmd_id)
    cmd = Command(cmd_id, "CreateTrainingClient", tenant_id, client_id, payload, now_ms())
    body = {
        "client_id": client_id,
        "future_id": ids.future_id_of(cmd_id),
        "type": "create_training_client",
        "status": "pending",
    }
    # No command field for these yet (see docs/GATEWAY.md, "schema gaps").
    extras = {"lora_dropout": lora.dropout, "batch_size": batch_size, "metadata": metadata}
    return Prepared(cmd, 202, body, extras)


def forward_backward(
    svc_seal: Any, tenant_id: str, cmd_id: str, client: ClientRec, req: v.ForwardBackward
) -> Prepared:
    if req.batch is not None:
        b = req.batch
        record = {
            "input_ids": b.input_ids,
            "attention_mask": b.attention_mask or [],
            "labels": b.labels or [],
            "target_tokens": [],
            "weights": [],
        }
    else:
        data = req.data or []
        any_weights = any(d.weights is not None for d in data)
        record = {
            "input_ids": [d.tokens for d in data],
            "attention_mask": [],
            "labels": [],
            "target_tokens": [d.target_tokens for d in data],
            "weights": [d.weights if d.weights is not None else [1.0] * len(d.tokens) for d in data]
            if any_weights
            else [],
        }
    payload = {
        "loss_fn": req.loss_fn,
        "return_logprobs": req.return_logprobs,
        "forward_only": False,
        "batch_ciphertext": svc_seal(tenant_id, "ForwardBackward", "tensafe.data.TokenBatch", record),
    }
    cmd = Command(cmd_id, "ForwardBackward", tenant_id, client.client_id, payload, now_ms())
    return Prepared(cmd, 202, _accepted(cmd))


def _adam(p: v.AdamParams | None) -> dict[str, float]:
    a = p or v.AdamParams()
    return {
        "learning_rate": a.learning_rate,
        "beta1": a.beta1,
        "beta2": a.beta2,
        "eps": a.eps,
        "weight_decay": a.weight_decay,
    }


def optim_step(tenant_id: str, cmd_id: str, client: ClientRec, req: v.OptimStep) -> Prepared:
    cmd = Command(cmd_id, "OptimStep", tenant_id, client.client_id, _adam(req.adam_params), now_ms())
    return Prepared(cmd, 202, _accepted(cmd))


def train_step(tenant_id: str, cmd_id: str, client: ClientRec, req: v.TrainStep, spec: ModelSpec) -> Prepared:
    payload: dict[str, Any] = {**_adam(req.adam_params), "max_length": min(128, spec.max_context_length)}
    cmd = Command(cmd_id, "TrainStep", tenant_id, client.client_id, payload, now_ms())
    return Prepared(cmd, 202, _accepted(cmd))


def sample(svc_seal: Any, tenant_id: str, cmd_id: str, client: ClientRec, req: v.Sample) -> Prepared:
    record = {"prompts": req.prompts or [], "prompt_tokens": req.prompt_tokens or [], "stop": req.stop or []}
    payload = {
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "seed": req.seed,
        "num_samples": req.num_samples,
        "prompts_ciphertext": svc_seal(tenant_id, "Sample", "tensafe.data.SampleInput", record),
    }
    cmd = Command(cmd_id, "Sample", tenant_id, client.client_id, payload, now_ms())
    return Prepared(cmd, 202, _accepted(cmd))


def save_state(
    tenant_id: str, cmd_id: str, client: ClientRec, req: v.SaveState, step_at_run: int
) -> Prepared:
    metadata = req.metadata or {}
    payload = {
        # API default "step-<step>": the step the client will have when this command runs
        # (its known step plus the optimizer steps queued before it).
        "name": req.name or f"step-{step_at_run}",
        "include_optimizer": req.include_optimizer,
        "metadata_json": ids.canonical_json(metadata).decode(),
    }
    cmd = Command(cmd_id, "SaveState", tenant_id, client.client_id, payload, now_ms())
    return Prepared(cmd, 202, _accepted(cmd), {"metadata": metadata})


def create_package(
    tenant_id: str, cmd_id: str, client: ClientRec, req: v.CreatePackage, step_at_run: int
) -> Prepared:
    """Recipients arrive as base64 hybrid KEM public keys; they are checked here so a bad
    key is a 400, not a failed future."""
    import base64
    import binascii

    from tensafe.crypto.kem import HybridKemPublicKey

    keys = []
    for i, text in enumerate(req.recipients):
        try:
            raw = base64.b64decode(text, validate=True)
            HybridKemPublicKey.from_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise one_violation(
                f"recipients.{i}", f"not a base64 hybrid X25519+ML-KEM-768 public key ({exc})"
            ) from None
        keys.append(raw)
    payload = {
        "name": req.name or f"package-step-{step_at_run}",
        "recipients": keys,
        "max_proofs": req.max_proofs,
    }
    cmd = Command(cmd_id, "CreatePackage", tenant_id, client.client_id, payload, now_ms())
    return Prepared(cmd, 202, _accepted(cmd), {})


def load_state(tenant_id: str, cmd_id: str, client: ClientRec, req: v.LoadState) -> Prepared:
    cmd = Command(
        cmd_id, "LoadState", tenant_id, client.client_id, {"artifact_id": req.artifact_id}, now_ms()
    )
    return Prepared(cmd, 202, _accepted(cmd), {"load_optimizer": req.load_optimizer})


def register_dataset(
    svc_seal: Any, tenant_id: str, cmd_id: str, req: v.RegisterDataset, raw_body: dict[str, Any]
) -> Prepared:
    dataset_id = ids.dataset_id_for(cmd_id)
    if req.records is not None:
        # content_hash covers the array exactly as sent (API.md §7.3)
        content_hash = ids.sha256_tag(ids.canonical_json(raw_body["records"]))
        sealed = svc_seal(
            tenant_id, "RegisterDataset", "tensafe.data.TextRecords", {"texts": [r.text for r in req.records]}
        )
        num, kind = len(req.records), "text"
    else:
        recs = req.token_records or []
        content_hash = ids.sha256_tag(ids.canonical_json(raw_body["token_records"]))
        record = {
            "input_ids": [r.input_ids for r in recs],
            "attention_mask": [],
            "labels": [r.labels if r.labels is not None else r.input_ids for r in recs],
            "target_tokens": [],
            "weights": [],
        }
        sealed = svc_seal(tenant_id, "RegisterDataset", "tensafe.data.TokenBatch", record)
        num, kind = len(recs), "tokens"
    payload = {"dataset_id": dataset_id, "name": req.name, "num_records": num, "records_ciphertext": sealed}
    ts = now_ms()
    # Keyed (and partitioned) by the dataset id: a dataset belongs to no training client.
    cmd = Command(cmd_id, "RegisterDataset", tenant_id, dataset_id, payload, ts)
    metadata = req.metadata or {}
    body = {
        "dataset_id": dataset_id,
        "name": req.name,
        "num_records": num,
        "content_hash": content_hash,
        "metadata": metadata,
        "created_at": ids.rfc3339(ts),
        "status": "pending",
    }
    return Prepared(cmd, 201, body, {"metadata": metadata, "content_hash": content_hash, "kind": kind})
