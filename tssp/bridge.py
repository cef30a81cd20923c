"""From a training client to a TSSP package: the service side of `create_package`.

The trainer worker calls ``package_adapter`` with the client's DPTrainer, a fresh
signed ledger checkpoint and the positions of the client's training events; this
module turns them into provenance (base model, client, inclusion proofs against the
checkpoint), a DP certificate and a signed, encrypted package.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensafe.crypto.kem import HybridKemPublicKey
from tensafe.crypto.signing import HybridSigningKey
from tensafe.events.checkpoint_format import (
    EventPosition,
    InclusionProofFile,
    SignedCheckpoint,
    parse_checkpoint_body,
)
from tensafe.events.merkle import leaf_hash

from .manifest import dp_certificate_from_metrics
from .package import PackageInfo, create_package


def ledger_evidence(
    checkpoint: Any,  # tensafe.events.checkpoints.CheckpointRecord
    tree: Any,  # tensafe.events.merkle.MerkleTree of the partition (leaf i = chain hash of seq i)
    chain_hashes: Sequence[bytes],
    events: Sequence[tuple[int, int]],  # (seq, offset) of the events to prove
    topic: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The signed checkpoint and inclusion proofs of ``events`` in its tree (as JSON dicts)."""
    body = parse_checkpoint_body(checkpoint.body)
    signed = SignedCheckpoint(
        body.origin,
        body.size,
        body.root,
        body.head_hash,
        body.ts_ms,
        checkpoint.signer_key_id,
        checkpoint.signature,
    )
    proofs = []
    for seq, offset in events:
        if seq >= checkpoint.tree_size:
            continue
        proof = InclusionProofFile(
            position=EventPosition(topic, checkpoint.partition, offset),
            leaf_hash=leaf_hash(chain_hashes[seq]),
            index=seq,
            size=checkpoint.tree_size,
            path=tuple(tree.inclusion_proof(seq, checkpoint.tree_size)),
            checkpoint=signed,
        )
        proofs.append(proof.to_dict())
    return signed.to_dict(), proofs


def package_adapter(
    trainer: Any,  # tensafe.trainer.dp_trainer.DPTrainer
    out_path: str | Path,
    *,
    model_ref: str,
    base_weights_sha256: str,
    tenant_id: str,
    client_id: str,
    ledger_id: str,
    checkpoint: Any,
    tree: Any,
    chain_hashes: Sequence[bytes],
    events: Sequence[tuple[int, int]],
    topic: str,
    signer: HybridSigningKey,
    recipients: list[HybridKemPublicKey],
) -> PackageInfo:
    signed, proofs = ledger_evidence(checkpoint, tree, chain_hashes, events, topic)
    provenance = {
        "base_model": {"ref": model_ref, "weights_sha256": base_weights_sha256},
        "tenant_id": tenant_id,
        "training_client_id": client_id,
        "ledger": {
            "ledger_id": ledger_id,
            "partition": checkpoint.partition,
            "checkpoint": signed,
            "inclusion_proofs": proofs,
        },
    }
    certificate = dp_certificate_from_metrics(trainer.dp_metrics())
    with tempfile.TemporaryDirectory(prefix="tensafe-adapter-") as tmp:
        trainer.export_adapter(tmp)
        return create_package(
            out_path,
            tmp,
            provenance=provenance,
            dp_certificate=certificate,
            signer=signer,
            recipients=recipients,
        )
