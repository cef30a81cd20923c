"""Audit operations on a ledger snapshot: verify, per-client view, inclusion proofs.

Pure functions over a ``LedgerSnapshot`` (from a live broker or an export file),
so the CLI and the tests use the same code for both sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensafe.events.checkpoint_format import (
    EventPosition,
    InclusionProofFile,
    SignedCheckpoint,
    parse_checkpoint_body,
)
from tensafe.events.checkpoints import CheckpointRecord, verify_checkpoint_signature
from tensafe.events.envelope import decode_envelope
from tensafe.events.export import LedgerSnapshot
from tensafe.events.merkle import MerkleTree, leaf_hash
from tensafe.events.topics import LEDGER
from tensafe.events.verify import Report, verify_records


class AuditError(Exception):
    pass


def verify_snapshot(
    snap: LedgerSnapshot,
    trusted_keys: dict | None = None,
    allow_fenced: bool = False,
    client_id: str | None = None,
) -> Report:
    if client_id is not None:
        # A client's events live in one partition: verify that partition's whole chain.
        parts = {p for p, recs in snap.ledger.items() if any(_client_of(raw) == client_id for _, raw in recs)}
        if not parts:
            raise AuditError(f"no events of client {client_id!r} in the ledger")
        ledger = {p: snap.ledger[p] for p in parts}
    else:
        ledger = snap.ledger
    return verify_records(ledger, snap.checkpoints, trusted_keys, allow_fenced)


def _client_of(raw: bytes) -> str | None:
    try:
        return decode_envelope(raw).client_id
    except Exception:
        return None


@dataclass
class LocatedEvent:
    partition: int
    offset: int
    seq: int
    chain_hash: bytes


def locate_event(snap: LedgerSnapshot, event_id: str) -> tuple[LocatedEvent, Report]:
    report = verify_records(snap.ledger, snap.checkpoints, allow_fenced=True)
    for p, rep in report.partitions.items():
        offsets = set(rep.accepted_offsets)
        seq = 0
        for offset, raw in snap.ledger[p]:
            if offset not in offsets:
                continue
            if decode_envelope(raw).event_id == event_id:
                return LocatedEvent(p, offset, seq, rep.hashes[seq]), report
            seq += 1
    raise AuditError(f"event {event_id!r} not found among accepted ledger events")


def latest_checkpoint_covering(snap: LedgerSnapshot, partition: int, seq: int) -> CheckpointRecord:
    cps = [c for c in snap.checkpoints if c.partition == partition and c.tree_size > seq]
    if not cps:
        raise AuditError(f"no signed checkpoint covers seq {seq} of partition {partition} yet")
    return max(cps, key=lambda c: c.tree_size)


def prove_event(snap: LedgerSnapshot, event_id: str, topic_prefix: str = "") -> InclusionProofFile:
    ev, report = locate_event(snap, event_id)
    cp = latest_checkpoint_covering(snap, ev.partition, ev.seq)
    verify_checkpoint_signature(cp)
    tree = MerkleTree()
    for digest in report.partitions[ev.partition].hashes[: cp.tree_size]:
        tree.append(digest)
    if tree.root(cp.tree_size) != cp.root:
        raise AuditError("the ledger does not match the checkpoint's root; run `tensafe audit verify`")
    parsed = parse_checkpoint_body(cp.body)
    signed = SignedCheckpoint(
        parsed.origin,
        parsed.size,
        parsed.root,
        parsed.head_hash,
        parsed.ts_ms,
        cp.signer_key_id,
        cp.signature,
    )
    return InclusionProofFile(
        position=EventPosition(topic_prefix + LEDGER, ev.partition, ev.offset),
        leaf_hash=leaf_hash(ev.chain_hash),
        index=ev.seq,
        size=cp.tree_size,
        path=tuple(tree.inclusion_proof(ev.seq, cp.tree_size)),
        checkpoint=signed,
    )


def check_proof(proof: InclusionProofFile, public_key) -> None:
    """Raise AuditError unless the checkpoint signature and the Merkle path both verify."""
    from tensafe.crypto.errors import SignatureError

    if public_key.key_id != proof.checkpoint.key_id:
        raise AuditError(
            f"proof is signed by key {proof.checkpoint.key_id}, not the trusted {public_key.key_id}"
        )
    try:
        proof.checkpoint.verify(public_key)
    except (SignatureError, ValueError) as exc:
        raise AuditError(f"checkpoint signature does not verify: {exc}") from exc
    if not proof.verify_path():
        raise AuditError("inclusion path does not lead to the signed root")
