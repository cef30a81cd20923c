"""Signed Merkle checkpoints of ledger partitions, published on tensafe.checkpoints.

A checkpoint pins (partition, tree size, Merkle root, chain head hash) under the
node's hybrid Ed25519 + ML-DSA-65 key. The signed bytes are the text body defined
in ``checkpoint_format`` (C2SP tlog-checkpoint style); the Avro record repeats its
fields, and verification checks that they agree with the signed body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tensafe.events import codec
from tensafe.events.checkpoint_format import checkpoint_body, ledger_origin, parse_checkpoint_body

CHECKPOINT_SCHEMA = "tensafe.ledger.Checkpoint"


class CheckpointError(Exception):
    code = "bad_checkpoint"


@dataclass(frozen=True)
class CheckpointRecord:
    partition: int
    tree_size: int
    root: bytes
    head_hash: bytes
    ts_ms: int
    signer_key_id: str
    signer_public_key: bytes
    body: bytes
    signature: bytes

    def encode(self) -> bytes:
        return codec.encode(CHECKPOINT_SCHEMA, self.__dict__)

    @classmethod
    def decode(cls, raw: bytes) -> CheckpointRecord:
        return cls(**codec.decode_as(CHECKPOINT_SCHEMA, raw))


def make_checkpoint(
    signer, ledger_id: str, partition: int, size: int, root: bytes, head: bytes
) -> CheckpointRecord:
    ts_ms = int(time.time() * 1000)
    body = checkpoint_body(ledger_origin(ledger_id, partition), size, root, head, ts_ms)
    public = signer.public_key()
    return CheckpointRecord(
        partition=partition,
        tree_size=size,
        root=root,
        head_hash=head,
        ts_ms=ts_ms,
        signer_key_id=public.key_id,
        signer_public_key=public.to_bytes(),
        body=body,
        signature=signer.sign(body),
    )


async def publish_checkpoint(producer, topic: str, cp: CheckpointRecord) -> None:
    fut = await producer.send(topic, cp.encode(), key=str(cp.partition).encode(), partition=cp.partition)
    await fut


def verify_checkpoint_signature(cp: CheckpointRecord, trusted_keys: dict[str, object] | None = None) -> None:
    """Check the hybrid signature and that the record's fields equal the signed body.

    ``trusted_keys`` maps key id -> HybridPublicKey; when given, the signer must be
    one of them (otherwise the key embedded in the record is used: trust on first use).
    """
    from tensafe.crypto.errors import SignatureError
    from tensafe.crypto.signing import HybridPublicKey

    try:
        embedded = HybridPublicKey.from_bytes(cp.signer_public_key)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint public key does not parse: {exc}") from exc
    if embedded.key_id != cp.signer_key_id:
        raise CheckpointError("checkpoint signer key id does not match its public key")
    key = embedded
    if trusted_keys is not None:
        if cp.signer_key_id not in trusted_keys:
            raise CheckpointError(f"checkpoint signed by untrusted key {cp.signer_key_id}")
        key = trusted_keys[cp.signer_key_id]
    try:
        key.verify(cp.body, cp.signature)
    except SignatureError as exc:
        raise CheckpointError(f"checkpoint signature invalid: {exc}") from exc
    parsed = parse_checkpoint_body(cp.body)
    expected_origin_suffix = f"/{cp.partition}"
    if (
        parsed.size != cp.tree_size
        or parsed.root != cp.root
        or parsed.head_hash != cp.head_hash
        or not parsed.origin.endswith(expected_origin_suffix)
    ):
        raise CheckpointError("checkpoint fields differ from the signed body")
