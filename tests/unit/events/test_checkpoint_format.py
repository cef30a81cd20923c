"""Checkpoint body (C2SP tlog-checkpoint text) and the signed-checkpoint / inclusion-proof
JSON files: exact bytes, round trips, strict parsing."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from tensafe.events.checkpoint_format import (
    Checkpoint,
    CheckpointFormatError,
    CheckpointKeyMismatch,
    EventPosition,
    InclusionProofFile,
    SignedCheckpoint,
    checkpoint_body,
    ledger_origin,
    parse_checkpoint_body,
    parse_ledger_origin,
)
from tensafe.events.merkle import MerkleTree, leaf_hash

ROOT8 = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
HEAD = bytes(range(32))
ORIGIN = "tensafe.ledger/ledger-main/3"

EXAMPLE_BODY = (
    b"tensafe.ledger/ledger-main/3\n"
    b"8\n"
    b"XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    b"chain-head 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    b"timestamp-ms 1735689600000\n"
)


def test_example_body_exact_bytes() -> None:
    body = checkpoint_body(ORIGIN, 8, ROOT8, HEAD, 1_735_689_600_000)
    assert body == EXAMPLE_BODY
    assert parse_checkpoint_body(body) == Checkpoint(ORIGIN, 8, ROOT8, HEAD, 1_735_689_600_000)
    # The first three lines are a plain C2SP checkpoint: origin, size, base64 root.
    origin, size, root = body.decode().split("\n")[:3]
    assert base64.b64decode(root) == ROOT8 and size == "8" and origin == ORIGIN


def test_ledger_origin() -> None:
    assert ledger_origin("ledger-main", 3) == ORIGIN
    assert parse_ledger_origin(ORIGIN) == ("ledger-main", 3)
    for bad_id, bad_part in [("", 0), ("a/b", 0), ("a b", 0), ("ok", -1), ("ok", 2**31), ("ok", True)]:
        with pytest.raises(CheckpointFormatError):
            ledger_origin(bad_id, bad_part)
    for bad in [
        "tensafe.ledger/x",
        "tensafe.ledger/x/03",
        "other/x/1",
        "tensafe.ledger/x/1/2",
        "tensafe.ledger//1",
    ]:
        with pytest.raises(CheckpointFormatError):
            parse_ledger_origin(bad)


_origin = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"),
    min_size=1,
    max_size=255,
)
_hash = st.binary(min_size=32, max_size=32)
_checkpoints = st.builds(
    Checkpoint,
    origin=_origin,
    size=st.integers(0, 2**64 - 1),
    root=_hash,
    head_hash=_hash,
    ts_ms=st.integers(0, 2**63 - 1),
)


@settings(max_examples=300, deadline=None)
@given(_checkpoints)
def test_body_round_trip(cp: Checkpoint) -> None:
    body = cp.body()
    assert body.endswith(b"\n") and body.count(b"\n") == 5
    assert parse_checkpoint_body(body) == cp
    assert parse_checkpoint_body(bytearray(body)) == cp
    assert checkpoint_body(cp.origin, cp.size, cp.root, cp.head_hash, cp.ts_ms) == body


ROOT_B64 = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="
HEAD_LINE = "chain-head " + HEAD.hex()


def _body(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (EXAMPLE_BODY[:-1], "end with a newline"),
        (EXAMPLE_BODY + b"\n", "exactly 5 lines"),
        (EXAMPLE_BODY + b"extra\n", "exactly 5 lines"),
        (_body(ORIGIN, "8", ROOT_B64, HEAD_LINE), "exactly 5 lines"),
        (EXAMPLE_BODY.replace(b"\n", b"\r\n"), "line 1"),
        (b"\xef\xbb\xbf" + EXAMPLE_BODY, "not ASCII"),
        (_body("", "8", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 1"),
        (_body("a b", "8", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 1"),
        (_body("a+b", "8", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 1"),
        (_body("x" * 256, "8", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 1"),
        (_body(ORIGIN, "08", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 2"),
        (_body(ORIGIN, "+8", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 2"),
        (_body(ORIGIN, " 8", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 2"),
        (_body(ORIGIN, "1_000", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 2"),
        (_body(ORIGIN, "", ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "line 2"),
        (_body(ORIGIN, str(2**64), ROOT_B64, HEAD_LINE, "timestamp-ms 1"), "64 bits"),
        (_body(ORIGIN, "8", ROOT_B64.rstrip("="), HEAD_LINE, "timestamp-ms 1"), "line 3"),
        (_body(ORIGIN, "8", ROOT_B64[:-2] + "h=", HEAD_LINE, "timestamp-ms 1"), "non-canonical"),
        (_body(ORIGIN, "8", base64.urlsafe_b64encode(ROOT8).decode(), HEAD_LINE, "timestamp-ms 1"), "line 3"),
        (_body(ORIGIN, "8", base64.b64encode(ROOT8[:31]).decode(), HEAD_LINE, "timestamp-ms 1"), "31 bytes"),
        (_body(ORIGIN, "8", ROOT8.hex(), HEAD_LINE, "timestamp-ms 1"), "line 3"),
        (_body(ORIGIN, "8", ROOT_B64, "chain-head " + HEAD.hex().upper(), "timestamp-ms 1"), "line 4"),
        (_body(ORIGIN, "8", ROOT_B64, "chain-head " + HEAD.hex()[:-2], "timestamp-ms 1"), "line 4"),
        (_body(ORIGIN, "8", ROOT_B64, "chain-head  " + HEAD.hex(), "timestamp-ms 1"), "line 4"),
        (_body(ORIGIN, "8", ROOT_B64, "timestamp-ms 1", HEAD_LINE), "line 4"),
        (_body(ORIGIN, "8", ROOT_B64, HEAD_LINE, "timestamp-ms 01"), "line 5"),
        (_body(ORIGIN, "8", ROOT_B64, HEAD_LINE, "timestamp-ms -1"), "line 5"),
        (_body(ORIGIN, "8", ROOT_B64, HEAD_LINE, "timestamp-ms 1.5"), "line 5"),
        (_body(ORIGIN, "8", ROOT_B64, HEAD_LINE, "timestamp_ms 1"), "line 5"),
        (_body(ORIGIN, "8", ROOT_B64, HEAD_LINE, f"timestamp-ms {2**63}"), "63 bits"),
        (b"x" * 2000, "more than"),
        ("text is not bytes", "must be bytes"),
    ],
)
def test_strict_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(CheckpointFormatError, match=message):
        parse_checkpoint_body(data)


def test_body_field_validation() -> None:
    ok = dict(origin=ORIGIN, size=8, root=ROOT8, head_hash=HEAD, ts_ms=1)
    for field, bad in [
        ("origin", "has space"),
        ("origin", "tensafe.ledger/ü/1"),
        ("size", -1),
        ("size", 2**64),
        ("size", True),
        ("size", 8.0),
        ("root", ROOT8[:31]),
        ("root", ROOT8.hex()),
        ("head_hash", b""),
        ("ts_ms", -1),
        ("ts_ms", 2**63),
    ]:
        with pytest.raises(CheckpointFormatError):
            checkpoint_body(**{**ok, field: bad})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- signatures


class Ed25519TestSigner:
    """A real (single-algorithm) signer with HybridSigningKey's surface, so these tests
    do not depend on tensafe.crypto being built yet."""

    def __init__(self) -> None:
        self._sk = Ed25519PrivateKey.generate()

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message)

    def public_key(self) -> Ed25519TestVerifier:
        return Ed25519TestVerifier(self._sk.public_key())


class Ed25519TestVerifier:
    def __init__(self, pk: Ed25519PublicKey) -> None:
        self._pk = pk
        raw = pk.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).digest()[:16].hex()

    def verify(self, message: bytes, signature: bytes) -> None:
        self._pk.verify(signature, message)


def _signed(size: int = 8) -> tuple[SignedCheckpoint, Ed25519TestSigner, MerkleTree]:
    tree = MerkleTree()
    tree.extend(hashlib.sha256(b"%d" % i).digest() for i in range(size))
    cp = Checkpoint(ORIGIN, size, tree.root(), HEAD, 1_735_689_600_000)
    signer = Ed25519TestSigner()
    return SignedCheckpoint.sign(cp, signer), signer, tree


def test_signed_checkpoint_sign_verify_json() -> None:
    sc, signer, _ = _signed()
    assert sc.key_id == signer.public_key().key_id
    sc.verify(signer.public_key())
    again = SignedCheckpoint.from_json(sc.to_json())
    assert again == sc
    again.verify(signer.public_key())
    doc = json.loads(sc.to_json())
    assert doc["body"].encode() == sc.body()
    assert set(doc) == {"format", "body", "key_id", "signature"}

    with pytest.raises(CheckpointKeyMismatch):
        sc.verify(Ed25519TestSigner().public_key())
    forged = SignedCheckpoint.from_checkpoint(
        Checkpoint(sc.origin, sc.size + 1, sc.root, sc.head_hash, sc.ts_ms), sc.key_id, sc.signature
    )
    with pytest.raises(InvalidSignature):
        forged.verify(signer.public_key())


def test_signed_checkpoint_with_hybrid_key() -> None:
    signing = pytest.importorskip("tensafe.crypto.signing")
    key = signing.HybridSigningKey.generate()
    sc = SignedCheckpoint.sign(Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest(), HEAD, 0), key)
    SignedCheckpoint.from_json(sc.to_json()).verify(key.public_key())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("key_id"),
        lambda d: d.update(extra=1),
        lambda d: d.update(format="tensafe.signed-checkpoint/v2"),
        lambda d: d.update(key_id=d["key_id"].upper()),
        lambda d: d.update(key_id=d["key_id"][:-2]),
        lambda d: d.update(signature=d["signature"].rstrip("=")),
        lambda d: d.update(signature=""),
        lambda d: d.update(signature=None),
        lambda d: d.update(body=d["body"].replace("\n", "\r\n")),
        lambda d: d.update(body=d["body"] + "x\n"),
        lambda d: d.update(body=base64.b64encode(d["body"].encode()).decode()),
        lambda d: d.update(body=d["body"].replace("tensafe", "tensäfe")),
    ],
)
def test_signed_checkpoint_strict_json(mutate: Callable[[dict[str, Any]], object]) -> None:
    sc, _, _ = _signed()
    doc = json.loads(sc.to_json())
    mutate(doc)
    with pytest.raises(CheckpointFormatError):
        SignedCheckpoint.from_json(json.dumps(doc))


def test_json_rejects_duplicates_and_garbage() -> None:
    sc, _, _ = _signed()
    text = sc.to_json()
    dup = text.replace('"key_id"', '"key_id": "00000000000000000000000000000000", "key_id"', 1)
    with pytest.raises(CheckpointFormatError, match="duplicate"):
        SignedCheckpoint.from_json(dup)
    for garbage in ["", "[]", "null", "{", b"\xff\xfe\x00", '{"format": NaN}']:
        with pytest.raises(CheckpointFormatError):
            SignedCheckpoint.from_json(garbage)


# --------------------------------------------------------------------------- inclusion proof file


def _proof_file(index: int = 5) -> tuple[InclusionProofFile, Ed25519TestSigner, MerkleTree]:
    sc, signer, tree = _signed(8)
    f = InclusionProofFile(
        position=EventPosition("tensafe.ledger", 3, 1000 + index),
        leaf_hash=tree.leaf_hash_at(index),
        index=index,
        size=8,
        path=tuple(tree.inclusion_proof(index, 8)),
        checkpoint=sc,
    )
    return f, signer, tree


def test_inclusion_proof_file_round_trip_and_verify() -> None:
    f, signer, tree = _proof_file()
    assert f.verify_path()
    g = InclusionProofFile.from_json(f.to_json())
    assert g == f and g.verify_path()
    g.checkpoint.verify(signer.public_key())
    doc = json.loads(f.to_json())
    assert doc["leaf_hash"] == leaf_hash(hashlib.sha256(b"5").digest()).hex()
    assert doc["tree_size"] == 8 and doc["index"] == 5 and len(doc["path"]) == 3
    assert doc["position"] == {"topic": "tensafe.ledger", "partition": 3, "offset": 1005}


def test_inclusion_proof_file_wrong_path_fails_verification() -> None:
    f, _, tree = _proof_file()
    wrong_leaf = InclusionProofFile(f.position, tree.leaf_hash_at(4), 5, 8, f.path, f.checkpoint)
    assert not wrong_leaf.verify_path()
    wrong_index = InclusionProofFile(f.position, f.leaf_hash, 4, 8, f.path, f.checkpoint)
    assert not wrong_index.verify_path()
    short = InclusionProofFile(f.position, f.leaf_hash, 5, 8, f.path[:-1], f.checkpoint)
    assert not short.verify_path()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(tree_size=9),  # must equal the checkpoint's size
        lambda d: d.update(index=8),
        lambda d: d.update(index=-1),
        lambda d: d.update(index=5.0),
        lambda d: d.update(index=True),
        lambda d: d.update(leaf_hash=d["leaf_hash"].upper()),
        lambda d: d.update(leaf_hash=d["leaf_hash"][:-2]),
        lambda d: d.update(path=[p.upper() for p in d["path"]]),
        lambda d: d.update(path="".join(d["path"])),
        lambda d: d["position"].update(partition=4),  # checkpoint origin names partition 3
        lambda d: d["position"].update(offset=-1),
        lambda d: d["position"].update(topic="bad topic"),
        lambda d: d["position"].pop("topic"),
        lambda d: d.pop("checkpoint"),
        lambda d: d.update(format="tensafe.inclusion-proof/v0"),
    ],
)
def test_inclusion_proof_file_strict_json(mutate: Callable[[dict[str, Any]], object]) -> None:
    f, _, _ = _proof_file()
    doc = json.loads(f.to_json())
    mutate(doc)
    with pytest.raises(CheckpointFormatError):
        InclusionProofFile.from_json(json.dumps(doc))
