"""Helpers for TSSP tests: take a package apart, change it, and put it back together
(optionally re-signing the manifest, to test what a *trusted* but faulty signer could emit)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensafe.crypto.kem import HybridKemPrivateKey
from tensafe.crypto.signing import HybridSigningKey
from tensafe.events.checkpoint_format import (
    Checkpoint,
    EventPosition,
    InclusionProofFile,
    SignedCheckpoint,
    ledger_origin,
)
from tensafe.events.merkle import MerkleTree, leaf_hash
from tensafe.tssp import _json, model_weights_sha256
from tensafe.tssp.container import read_archive, write_archive
from tensafe.tssp.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, sign_envelope
from tensafe.tssp.manifest import MANIFEST_NAME, SUBJECT_NAMES

Members = dict[str, bytes]

LEDGER_ID = "test-ledger"
PARTITION = 2
BASE_REF = "tiny-test-llama"


@dataclass
class TinyModel:
    base_dir: Path
    adapter_dir: Path
    dp_metrics: dict[str, Any]
    vocab: int


@dataclass
class Keys:
    signer: HybridSigningKey
    ledger: HybridSigningKey
    other_signer: HybridSigningKey
    alice: HybridKemPrivateKey
    bob: HybridKemPrivateKey
    mallory: HybridKemPrivateKey

    @property
    def trusted(self) -> dict:
        return {k.key_id: k.public_key() for k in (self.signer, self.ledger)}


def make_evidence(ledger_key: HybridSigningKey, n_events: int = 13, proven: tuple[int, ...] = (0, 5, 12)):
    """A signed checkpoint over ``n_events`` chain hashes and inclusion proofs of some of them."""
    tree = MerkleTree()
    hashes = [hashlib.sha256(b"event-%d" % i).digest() for i in range(n_events)]
    for h in hashes:
        tree.append(h)
    cp = Checkpoint(ledger_origin(LEDGER_ID, PARTITION), n_events, tree.root(), hashes[-1], 1_700_000_000_000)
    signed = SignedCheckpoint.sign(cp, ledger_key)
    proofs = [
        InclusionProofFile(
            position=EventPosition("tensafe.ledger", PARTITION, 100 + i),
            leaf_hash=leaf_hash(hashes[i]),
            index=i,
            size=n_events,
            path=tuple(tree.inclusion_proof(i, n_events)),
            checkpoint=signed,
        )
        for i in proven
    ]
    return signed, proofs


def make_provenance(tiny: TinyModel, keys: Keys, *, with_evidence: bool = True) -> dict[str, Any]:
    signed, proofs = make_evidence(keys.ledger) if with_evidence else (None, [])
    return {
        "base_model": {"ref": BASE_REF, "weights_sha256": model_weights_sha256(tiny.base_dir)},
        "tenant_id": "tenant-a",
        "training_client_id": "tc_0123",
        "ledger": {
            "ledger_id": LEDGER_ID,
            "partition": PARTITION,
            "checkpoint": signed,
            "inclusion_proofs": proofs,
        },
    }


def members_of(pkg: bytes) -> Members:
    return {e.name: bytes(e.data) for e in read_archive(pkg).entries}


def statement_of(pkg: bytes) -> dict[str, Any]:
    return json.loads(Envelope.parse(members_of(pkg)[MANIFEST_NAME]).payload)


def assemble(members: Members, order: list[str] | None = None) -> bytes:
    head = [MANIFEST_NAME] if MANIFEST_NAME in members else []
    names = order or head + sorted(n for n in members if n != MANIFEST_NAME)
    return write_archive([(n, members[n]) for n in names])


def resign(
    pkg: bytes,
    signer: HybridSigningKey,
    *,
    statement: Callable[[dict[str, Any]], None] | None = None,
    members: Callable[[Members], None] | None = None,
    fix_digests: bool = True,
) -> bytes:
    """Apply ``members`` then ``statement`` edits, refresh subject digests, re-sign with ``signer``."""
    m = members_of(pkg)
    st = json.loads(Envelope.parse(m[MANIFEST_NAME]).payload)
    if members:
        members(m)
    if fix_digests:
        for subj in st["subject"]:
            if subj["name"] in m and subj["name"] in SUBJECT_NAMES:
                subj["digest"]["sha256"] = hashlib.sha256(m[subj["name"]]).hexdigest()
    if statement:
        statement(st)
    env = sign_envelope(IN_TOTO_PAYLOAD_TYPE, _json.dumps(st), signer)
    m[MANIFEST_NAME] = env.to_json()
    return assemble(m)


def regions(pkg: bytes) -> list[tuple[int, int, str]]:
    """(start, end, label) for every byte range: 'zip' headers/directory, or a member's data."""
    out: list[tuple[int, int, str]] = []
    off = 0
    for e in read_archive(pkg).entries:
        hdr = 30 + len(e.name)
        out.append((off, off + hdr, "zip"))
        out.append((off + hdr, off + hdr + len(e.data), e.name))
        off += hdr + len(e.data)
    out.append((off, len(pkg), "zip"))
    return out
