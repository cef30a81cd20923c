"""Read-model records -> the JSON shapes of docs/API.md (training client, future,
results per type, artifact, dataset, dp_metrics, audit entry).

Sealed outcome fields (log-probabilities, completions) are opened here, with the
caller's tenant key, only when the caller reads its own future: the read model
keeps ciphertext, never clear text.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tensafe.crypto.errors import CryptoError
from tensafe.crypto.sealed import open_sealed
from tensafe.events import codec
from tensafe.gateway.futures import FutureRec
from tensafe.gateway.ids import future_id_of, rfc3339
from tensafe.gateway.readmodel import ArtifactRec, AuditEntry, ClientRec, DatasetRec, ReadModel

log = logging.getLogger(__name__)


# -- training clients ------------------------------------------------------------------
def guarantee(create: dict[str, Any]) -> str:
    if not create.get("dp_enabled", True):
        return "none"
    if create.get("sampling_mode") == "poisson":
        return "exact"
    return "conditional_on_client_sampling" if create.get("dataset_size") else "unamplified"


def _eps(c: ClientRec) -> tuple[float | None, float | None, float | None]:
    """(spent, remaining, target), all None when DP is off."""
    if not c.create.get("dp_enabled", True):
        return None, None, None
    target = c.create.get("target_epsilon")
    spent = c.epsilon_spent
    remaining = max(0.0, target - spent) if target is not None else None
    return spent, remaining, target


def dp_json(c: ClientRec) -> dict[str, Any]:
    cr = c.create
    on = bool(cr.get("dp_enabled", True))
    spent, _, target = _eps(c)
    return {
        "enabled": on,
        "noise_multiplier": cr.get("noise_multiplier"),
        "max_grad_norm": cr.get("max_grad_norm"),
        "target_epsilon": target,
        "target_delta": cr.get("target_delta"),
        "accountant": cr.get("accountant"),
        "sampling": cr.get("sampling_mode"),
        "sample_rate": c.sample_rate if on else None,
        "dataset_size": cr.get("dataset_size"),
        "expected_batch_size": cr.get("expected_batch_size"),
        "epsilon_spent": spent,
        "guarantee": guarantee(cr),
    }


def client_json(c: ClientRec) -> dict[str, Any]:
    cr = c.create
    return {
        "client_id": c.client_id,
        "status": c.status,
        "model_ref": cr.get("model_ref"),
        "step": c.step,
        "created_at": rfc3339(c.created_ms),
        "lora_config": {
            "rank": cr.get("lora_rank"),
            "alpha": cr.get("lora_alpha"),
            "dropout": c.extras.get("lora_dropout", 0.0),
            "target_modules": list(cr.get("target_modules") or []),
        },
        "batch_size": c.extras.get("batch_size"),
        "dataset_id": cr.get("dataset_id"),
        "metadata": c.extras.get("metadata") or {},
        "dp": dp_json(c),
        "last_event_seq": c.last_event_seq,
    }


def dp_metrics_json(c: ClientRec) -> dict[str, Any]:
    cr = c.create
    on = bool(cr.get("dp_enabled", True))
    spent, remaining, target = _eps(c)
    return {
        "enabled": on,
        "epsilon_spent": spent,
        "epsilon_remaining": remaining,
        "target_epsilon": target,
        "delta": cr.get("target_delta") if on else None,
        "steps": c.step,
        "noise_multiplier": cr.get("noise_multiplier"),
        "max_grad_norm": cr.get("max_grad_norm"),
        "sample_rate": c.sample_rate if on else None,
        "accountant": cr.get("accountant"),
        "sampling_mode": cr.get("sampling_mode"),
        "guarantee": guarantee(cr),
    }


# -- datasets, artifacts, audit ----------------------------------------------------------
def dataset_json(d: DatasetRec) -> dict[str, Any]:
    return {
        "dataset_id": d.dataset_id,
        "name": d.name,
        "num_records": d.num_records,
        "content_hash": d.content_hash,
        "metadata": d.metadata,
        "created_at": rfc3339(d.created_ms),
        "status": d.status,
    }


def _checkpoint_covering(model: ReadModel, partition: int | None, seq: int | None) -> dict[str, Any] | None:
    if partition is None or seq is None:
        return None
    for size, root in reversed(model.checkpoints.get(partition, [])):
        if size > seq:
            return {"tree_size": size, "root_hash": root}
    return None


def artifact_json(a: ArtifactRec, model: ReadModel) -> dict[str, Any]:
    cert = None
    if a.kind == "checkpoint" and a.dp is not None:
        create = {
            "dp_enabled": True,
            "sampling_mode": a.dp["sampling_mode"],
            "dataset_size": a.dp["dataset_size"],
        }
        cert = {
            "epsilon": a.epsilon,
            "delta": a.dp["delta"],
            "accountant": a.dp["accountant"],
            "sampling_mode": a.dp["sampling_mode"],
            "guarantee": guarantee(create),
            "noise_multiplier": a.dp["noise_multiplier"],
            "max_grad_norm": a.dp["max_grad_norm"],
            "sample_rate": a.dp["sample_rate"],
            "steps": a.step,
            "dataset_size": a.dp["dataset_size"],
            "ledger_seq": a.ledger_seq,
            "checkpoint": _checkpoint_covering(model, a.partition, a.ledger_seq),
        }
    return {
        "artifact_id": a.artifact_id,
        "kind": a.kind,
        "name": a.name,
        "client_id": a.client_id,
        "dataset_id": a.dataset_id,
        "step": a.step,
        "content_hash": a.content_hash,
        "encryption": {"algorithm": "AES-256-GCM", "key_id": a.key_id},
        "size": a.size,
        "include_optimizer": a.include_optimizer,
        "metadata": a.metadata,
        "created_at": rfc3339(a.created_ms),
        "dp_certificate": cert,
    }


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "partition": e.partition,
        "epoch": e.epoch,
        "event_type": e.event_type,
        "event_id": e.event_id,
        "ts_ms": e.ts_ms,
        "hash": e.hash,
        "prev_hash": e.prev_hash,
        "command_id": future_id_of(e.command_id) if e.command_id else None,
    }


# -- futures ------------------------------------------------------------------------------
def accepted_json(f: FutureRec) -> dict[str, Any]:
    """The 202 body of a command (API.md §6)."""
    return {
        "future_id": future_id_of(f.command_id),
        "type": f.api_type,
        "client_id": f.client_id,
        "status": "pending",
    }


def future_json(f: FutureRec, model: ReadModel, keyring: Any) -> dict[str, Any]:
    result = None
    if f.status == "completed":
        if f.result is None:
            f.result = _result(f, model, keyring)
        result = f.result
    return {
        "future_id": future_id_of(f.command_id),
        "type": f.api_type,
        "client_id": f.client_id,
        "status": f.status,
        "created_at": rfc3339(f.created_ms),
        "updated_at": rfc3339(f.updated_ms),
        "result": result,
        "error": f.error if f.status in ("failed", "cancelled") else None,
    }


def _open(keyring: Any, f: FutureRec, blob: bytes | None) -> Any:
    """Open a sealed outcome field: Avro single-object data record or JSON bytes inside."""
    if not blob:
        return None
    assert f.outcome_type is not None
    last: Exception | None = None
    for context in (f.outcome_type, f.command_type):
        try:
            clear = open_sealed(keyring, f.tenant_id, context, blob)
        except CryptoError as exc:
            last = exc
            continue
        try:
            if clear[:2] == codec.SOE_MAGIC:
                return codec.decode(clear)[1]
            return json.loads(clear)
        except ValueError as exc:  # codec.DecodeError is a ValueError too
            log.warning("future %s: sealed result is neither a data record nor JSON: %s", f.command_id, exc)
            return None
    log.warning("future %s: sealed result does not open: %s", f.command_id, last)
    return None


def _result(f: FutureRec, model: ReadModel, keyring: Any) -> dict[str, Any] | None:
    p = f.outcome or {}
    t = f.command_type
    client = model.clients.get(f.client_id)
    if t == "CreateTrainingClient":
        return client_json(client) if client is not None else None
    if t == "ForwardBackward":
        logprobs = _open(keyring, f, p.get("result_ciphertext"))
        if isinstance(logprobs, dict):  # tensafe.data.FloatRows
            logprobs = logprobs.get("rows")
        return {
            "loss": p["loss"],
            "loss_sum": p["loss_sum"],
            "num_tokens": p["num_tokens"],
            "num_samples": p["num_samples"],
            "clip": {
                "max_grad_norm": p["max_grad_norm"],
                "fraction_clipped": p["fraction_clipped"],
                "mean_norm": p["mean_grad_norm"],
                "max_norm": p["max_sample_grad_norm"],
            },
            "logprobs": logprobs,
        }
    dp_on = client is None or bool(client.create.get("dp_enabled", True))
    target = client.create.get("target_epsilon") if client is not None else None
    if t in ("OptimStep", "TrainStep"):
        spent = p["epsilon_spent"] if dp_on else None
        out: dict[str, Any] = {
            "step": p["step"],
            "epsilon_spent": spent,
            "epsilon_remaining": max(0.0, target - spent)
            if spent is not None and target is not None
            else None,
            "sample_rate": p["sample_rate"] if dp_on else None,
            "learning_rate": p.get("learning_rate", f.info.get("learning_rate")),
        }
        if t == "OptimStep":
            out.update(noise_multiplier=p["noise_multiplier"], num_samples=p["samples_in_step"])
        else:
            out.update(
                loss=p["loss"],
                loss_sum=None,
                num_tokens=p["num_tokens"],
                num_samples=p["batch_size"],
                noise_multiplier=client.create.get("noise_multiplier") if client is not None else None,
                clip={
                    "max_grad_norm": client.create.get("max_grad_norm") if client is not None else None,
                    "fraction_clipped": p["fraction_clipped"],
                    "mean_norm": None,
                    "max_norm": None,
                },
            )
        return out
    if t == "Sample":
        return _sample_result(f, p, keyring)
    if t == "SaveState":
        a = model.artifacts.get(p["artifact_id"])
        return artifact_json(a, model) if a is not None else None
    if t == "LoadState":
        return {
            "artifact_id": p["artifact_id"],
            "step": p["step"],
            "loaded_optimizer": f.info.get("load_optimizer", True),
        }
    if t == "RegisterDataset":
        d = model.datasets.get(p.get("dataset_id", ""))
        return dataset_json(d) if d is not None else None
    if t == "CreatePackage":
        return {
            "artifact_id": p["artifact_id"],
            "package_id": p["package_id"],
            "name": p.get("name"),
            "manifest_sha256": p["manifest_sha256"],
            "signer_key_id": p["signer_key_id"],
            "recipients": list(p["recipients"]),
            "epsilon": p["epsilon"],
            "delta": p["delta"],
            "checkpoint_tree_size": p["checkpoint_tree_size"],
            "size": p.get("size"),
        }
    if t == "CancelCommand":
        return {"cancelled_future_id": future_id_of(f.info.get("target_command_id", ""))}
    return None


def _sample_result(f: FutureRec, p: dict[str, Any], keyring: Any) -> dict[str, Any]:
    opened = _open(keyring, f, p.get("completions_ciphertext"))
    if isinstance(opened, dict):  # tensafe.data.SampleOutput
        opened = opened.get("completions")
    per_prompt = int(f.info.get("num_samples") or 1)
    samples = []
    for i, c in enumerate(opened or []):
        tokens = list(c.get("tokens") or [])
        samples.append(
            {
                "prompt_index": i // per_prompt,
                "completion": c.get("text", ""),
                "tokens": tokens,
                "logprobs": list(c.get("logprobs") or []),
                "finish_reason": c.get("finish_reason"),
                "prompt_tokens": c.get("prompt_tokens"),
                "completion_tokens": c.get("completion_tokens", len(tokens)),
            }
        )
    return {"samples": samples, "model_step": f.model_step}
