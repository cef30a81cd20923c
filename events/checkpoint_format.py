"""The checkpoint body a TenSafe ledger signs, and the JSON proof files built on it.

The body is a C2SP tlog-checkpoint note text (https://c2sp.org/tlog-checkpoint):
ASCII lines, each terminated by a single "\\n":

    tensafe.ledger/<ledger_id>/<partition>      origin
    <tree size>                                 decimal, no leading zeros
    <root hash>                                 standard base64 (RFC 4648 §4), padded
    chain-head <64 lowercase hex>               extension: hash of event seq size-1
    timestamp-ms <decimal>                      extension: Unix time in milliseconds

The chain-head line pins the hash chain to the tree: whoever holds the event at
``seq == size - 1`` can check both at once. For ``size == 0`` it is the partition's
genesis hash (``tensafe.events.chain.genesis_hash``), the value the next event links to.

Parsing is strict — exactly these five lines, canonical encodings only — so one
checkpoint has exactly one byte encoding and a signature over it means one thing.
Signing happens elsewhere (``tensafe.crypto.signing.HybridSigningKey.sign(body)``);
this module only defines the bytes and carries signatures around. Spec: docs/MERKLE.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from tensafe.events import strict_json
from tensafe.events.proofs import verify_inclusion

__all__ = [
    "CHECKPOINT_FORMAT",
    "INCLUSION_PROOF_FORMAT",
    "Checkpoint",
    "CheckpointFormatError",
    "CheckpointKeyMismatch",
    "EventPosition",
    "InclusionProofFile",
    "SignedCheckpoint",
    "checkpoint_body",
    "ledger_origin",
    "parse_checkpoint_body",
    "parse_ledger_origin",
]

ORIGIN_PREFIX = "tensafe.ledger"
CHECKPOINT_FORMAT = "tensafe.signed-checkpoint/v1"
INCLUSION_PROOF_FORMAT = "tensafe.inclusion-proof/v1"
HASH_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1
MAX_TIMESTAMP_MS = 2**63 - 1
MAX_ORIGIN_LEN = 255
MAX_BODY_LEN = 1024  # a valid body is < 500 bytes; refuse to parse anything huge
MAX_SIGNATURE_LEN = 16384  # Ed25519 + ML-DSA-65 is ~3.4 KB

# C2SP: origin SHOULD be a schema-less URL without spaces or '+'. We make it a MUST,
# and ASCII-only, so the origin line has no encoding or whitespace ambiguity.
_ORIGIN_RE = re.compile(r"[!-*,-~]{1,255}")
_LEDGER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")  # no sign, no '_', no leading zeros
_HEAD_RE = re.compile(r"chain-head ([0-9a-f]{64})")
_TS_RE = re.compile(r"timestamp-ms (0|[1-9][0-9]*)")
_KEY_ID_RE = re.compile(r"[0-9a-f]{32}")  # hex of the first 16 bytes of SHA-256(pubkey)


class CheckpointFormatError(ValueError):
    """A checkpoint body or proof file that is not in the exact canonical format."""


class CheckpointKeyMismatch(ValueError):
    """The checkpoint was signed by a different key than the one offered to verify it."""


class Signer(Protocol):
    """What SignedCheckpoint.sign needs (``HybridSigningKey`` satisfies it)."""

    def sign(self, message: bytes) -> bytes: ...

    def public_key(self) -> Verifier: ...


class Verifier(Protocol):
    """What SignedCheckpoint.verify needs (``HybridPublicKey`` satisfies it)."""

    @property
    def key_id(self) -> str: ...

    def verify(self, message: bytes, signature: bytes) -> None: ...


# --------------------------------------------------------------------------- origin


def ledger_origin(ledger_id: str, partition: int) -> str:
    """The origin line of a TenSafe ledger partition: ``tensafe.ledger/<ledger_id>/<partition>``."""
    if not isinstance(ledger_id, str) or not _LEDGER_ID_RE.fullmatch(ledger_id):
        raise CheckpointFormatError(f"ledger id must match {_LEDGER_ID_RE.pattern}, got {ledger_id!r}")
    if not _is_int(partition) or not 0 <= partition < 2**31:
        raise CheckpointFormatError(f"partition must be an int in [0, 2^31), got {partition!r}")
    return f"{ORIGIN_PREFIX}/{ledger_id}/{partition}"


def parse_ledger_origin(origin: str) -> tuple[str, int]:
    """Inverse of ledger_origin: ``(ledger_id, partition)``."""
    parts = origin.split("/") if isinstance(origin, str) else []
    if (
        len(parts) != 3
        or parts[0] != ORIGIN_PREFIX
        or not _LEDGER_ID_RE.fullmatch(parts[1])
        or not _DECIMAL_RE.fullmatch(parts[2])
        or int(parts[2]) >= 2**31
    ):
        raise CheckpointFormatError(
            f"not a TenSafe ledger origin ({ORIGIN_PREFIX}/<ledger_id>/<partition>): {origin!r}"
        )
    return parts[1], int(parts[2])


# --------------------------------------------------------------------------- body


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The signed statement: the tree of ``size`` leaves of ``origin`` has root ``root``."""

    origin: str
    size: int
    root: bytes
    head_hash: bytes
    ts_ms: int

    def __post_init__(self) -> None:
        # Validate at construction so every Checkpoint in memory has a canonical body.
        if not isinstance(self.origin, str) or not _ORIGIN_RE.fullmatch(self.origin):
            raise CheckpointFormatError(
                f"origin must be 1-{MAX_ORIGIN_LEN} printable ASCII characters, no space or '+': {self.origin!r}"
            )
        if not _is_int(self.size) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointFormatError(f"tree size must be an int in [0, 2^64), got {self.size!r}")
        if not _is_hash(self.root):
            raise CheckpointFormatError(f"root must be {HASH_SIZE} bytes, got {self.root!r:.80}")
        if not _is_hash(self.head_hash):
            raise CheckpointFormatError(f"head hash must be {HASH_SIZE} bytes, got {self.head_hash!r:.80}")
        if not _is_int(self.ts_ms) or not 0 <= self.ts_ms <= MAX_TIMESTAMP_MS:
            raise CheckpointFormatError(f"timestamp must be an int in [0, 2^63), got {self.ts_ms!r}")
        object.__setattr__(self, "root", bytes(self.root))
        object.__setattr__(self, "head_hash", bytes(self.head_hash))

    def body(self) -> bytes:
        return (
            f"{self.origin}\n"
            f"{self.size}\n"
            f"{base64.b64encode(self.root).decode('ascii')}\n"
            f"chain-head {self.head_hash.hex()}\n"
            f"timestamp-ms {self.ts_ms}\n"
        ).encode("ascii")


def checkpoint_body(origin: str, size: int, root: bytes, head_hash: bytes, ts_ms: int) -> bytes:
    """The exact bytes to sign for a checkpoint. Raises CheckpointFormatError on bad fields."""
    return Checkpoint(origin, size, root, head_hash, ts_ms).body()


def parse_checkpoint_body(data: bytes) -> Checkpoint:
    """Strict inverse of checkpoint_body: accepts only bytes that it would have produced."""
    if not isinstance(data, bytes | bytearray):
        raise CheckpointFormatError(f"checkpoint body must be bytes, got {type(data).__name__}")
    if len(data) > MAX_BODY_LEN:
        raise CheckpointFormatError(f"checkpoint body is {len(data)} bytes, more than {MAX_BODY_LEN}")
    try:
        text = bytes(data).decode("ascii")
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError(f"checkpoint body is not ASCII (byte {exc.start})") from None
    if not text.endswith("\n"):
        raise CheckpointFormatError("checkpoint body must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != 5:
        raise CheckpointFormatError(
            f"checkpoint body must have exactly 5 lines (origin, size, root, chain-head, timestamp-ms), got {len(lines)}"
        )
    origin, size_s, root_s, head_s, ts_s = lines
    if not _ORIGIN_RE.fullmatch(origin):
        raise CheckpointFormatError(
            f"line 1 (origin): not 1-255 printable ASCII without space or '+': {origin!r}"
        )
    if not _DECIMAL_RE.fullmatch(size_s):
        raise CheckpointFormatError(f"line 2 (tree size): not a canonical decimal: {size_s!r}")
    size = int(size_s)
    if size > MAX_TREE_SIZE:
        raise CheckpointFormatError(f"line 2 (tree size): {size} does not fit in 64 bits")
    root = _strict_b64(root_s, "line 3 (root hash)")
    if len(root) != HASH_SIZE:
        raise CheckpointFormatError(f"line 3 (root hash): decodes to {len(root)} bytes, not {HASH_SIZE}")
    m = _HEAD_RE.fullmatch(head_s)
    if not m:
        raise CheckpointFormatError(f"line 4: expected 'chain-head <64 lowercase hex>', got {head_s!r}")
    head = bytes.fromhex(m.group(1))
    m = _TS_RE.fullmatch(ts_s)
    if not m:
        raise CheckpointFormatError(f"line 5: expected 'timestamp-ms <canonical decimal>', got {ts_s!r}")
    ts_ms = int(m.group(1))
    if ts_ms > MAX_TIMESTAMP_MS:
        raise CheckpointFormatError(f"line 5 (timestamp-ms): {ts_ms} does not fit in 63 bits")
    cp = Checkpoint(origin, size, root, head, ts_ms)
    if cp.body() != data:  # belt and braces: the canonical form must round-trip exactly
        raise CheckpointFormatError("checkpoint body is not in canonical form")
    return cp


# --------------------------------------------------------------------------- signed checkpoint


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint plus the signature over its body and the id of the signing key."""

    origin: str
    size: int
    root: bytes
    head_hash: bytes
    ts_ms: int
    key_id: str
    signature: bytes

    def __post_init__(self) -> None:
        Checkpoint(self.origin, self.size, self.root, self.head_hash, self.ts_ms)  # validates
        if not isinstance(self.key_id, str) or not _KEY_ID_RE.fullmatch(self.key_id):
            raise CheckpointFormatError(f"key_id must be 32 lowercase hex characters, got {self.key_id!r}")
        if (
            not isinstance(self.signature, bytes | bytearray)
            or not 0 < len(self.signature) <= MAX_SIGNATURE_LEN
        ):
            raise CheckpointFormatError(f"signature must be 1-{MAX_SIGNATURE_LEN} bytes")
        object.__setattr__(self, "root", bytes(self.root))
        object.__setattr__(self, "head_hash", bytes(self.head_hash))
        object.__setattr__(self, "signature", bytes(self.signature))

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.origin, self.size, self.root, self.head_hash, self.ts_ms)

    def body(self) -> bytes:
        return self.checkpoint.body()

    @classmethod
    def from_checkpoint(cls, cp: Checkpoint, key_id: str, signature: bytes) -> SignedCheckpoint:
        return cls(cp.origin, cp.size, cp.root, cp.head_hash, cp.ts_ms, key_id, signature)

    @classmethod
    def sign(cls, cp: Checkpoint, signer: Signer) -> SignedCheckpoint:
        """Sign ``cp.body()`` with ``signer`` (e.g. a ``HybridSigningKey``)."""
        return cls.from_checkpoint(cp, signer.public_key().key_id, signer.sign(cp.body()))

    def verify(self, public_key: Verifier) -> None:
        """Raise unless ``public_key`` is the named signer and its signature over the body holds.

        A key-id mismatch raises CheckpointKeyMismatch; a bad signature raises whatever
        ``public_key.verify`` raises (``tensafe.crypto.errors.SignatureError``).
        """
        if public_key.key_id != self.key_id:
            raise CheckpointKeyMismatch(f"checkpoint signed by key {self.key_id}, not {public_key.key_id}")
        public_key.verify(self.body(), self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            # The body travels as text, byte for byte what was signed (it is ASCII);
            # the parsed fields are not repeated, so they cannot disagree with it.
            "body": self.body().decode("ascii"),
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, obj: object) -> SignedCheckpoint:
        d = _exact_keys(obj, {"format", "body", "key_id", "signature"}, "signed checkpoint")
        if d["format"] != CHECKPOINT_FORMAT:
            raise CheckpointFormatError(
                f"signed checkpoint: format must be {CHECKPOINT_FORMAT!r}, got {d['format']!r}"
            )
        body = d["body"]
        if not isinstance(body, str) or not body.isascii():
            raise CheckpointFormatError("signed checkpoint: body must be an ASCII string")
        cp = parse_checkpoint_body(body.encode("ascii"))
        signature = _strict_b64(
            _str(d["signature"], "signed checkpoint: signature"), "signed checkpoint: signature"
        )
        return cls.from_checkpoint(cp, _str(d["key_id"], "signed checkpoint: key_id"), signature)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedCheckpoint:
        return cls.from_dict(_loads(text))


# --------------------------------------------------------------------------- inclusion proof file


@dataclass(frozen=True, slots=True)
class EventPosition:
    """Where the event lives in Kafka (its ledger index is InclusionProofFile.index == seq)."""

    topic: str
    partition: int
    offset: int

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", self.topic):
            raise CheckpointFormatError(f"position.topic is not a Kafka topic name: {self.topic!r}")
        if not _is_int(self.partition) or not 0 <= self.partition < 2**31:
            raise CheckpointFormatError(
                f"position.partition must be an int in [0, 2^31), got {self.partition!r}"
            )
        if not _is_int(self.offset) or not 0 <= self.offset < 2**63:
            raise CheckpointFormatError(f"position.offset must be an int in [0, 2^63), got {self.offset!r}")


@dataclass(frozen=True, slots=True)
class InclusionProofFile:
    """What ``tensafe`` CLI writes to prove one event is in a signed checkpoint.

    ``leaf_hash`` = SHA-256(0x00 || chain hash of the event); ``path`` is the RFC 9162
    inclusion proof of leaf ``index`` (== the event's seq) in the tree of ``size``
    leaves, which must be the checkpoint's size.
    """

    position: EventPosition
    leaf_hash: bytes
    index: int
    size: int
    path: tuple[bytes, ...]
    checkpoint: SignedCheckpoint

    def __post_init__(self) -> None:
        if not isinstance(self.position, EventPosition):
            raise CheckpointFormatError("position must be an EventPosition")
        if not isinstance(self.checkpoint, SignedCheckpoint):
            raise CheckpointFormatError("checkpoint must be a SignedCheckpoint")
        if not _is_hash(self.leaf_hash):
            raise CheckpointFormatError(f"leaf_hash must be {HASH_SIZE} bytes")
        if not _is_int(self.size) or self.size != self.checkpoint.size:
            raise CheckpointFormatError(
                f"tree_size {self.size!r} differs from the checkpoint's {self.checkpoint.size}"
            )
        if not _is_int(self.index) or not 0 <= self.index < self.size:
            raise CheckpointFormatError(f"index {self.index!r} outside [0, {self.size})")
        if (
            not isinstance(self.path, tuple | list)
            or not all(_is_hash(p) for p in self.path)
            or len(self.path) > 64
        ):
            raise CheckpointFormatError(f"path must be at most 64 hashes of {HASH_SIZE} bytes")
        try:
            _, origin_partition = parse_ledger_origin(self.checkpoint.origin)
        except CheckpointFormatError:
            origin_partition = None  # a non-TenSafe origin names no partition to cross-check
        if origin_partition is not None and origin_partition != self.position.partition:
            raise CheckpointFormatError(
                f"position.partition {self.position.partition} is not the checkpoint's partition {origin_partition}"
            )
        object.__setattr__(self, "leaf_hash", bytes(self.leaf_hash))
        object.__setattr__(self, "path", tuple(bytes(p) for p in self.path))

    def verify_path(self) -> bool:
        """The Merkle half of verification: the path leads from leaf_hash to the checkpoint root.

        The caller must also check the signature (``self.checkpoint.verify(public_key)``)
        against a key it trusts, and that leaf_hash matches the event it holds.
        """
        return verify_inclusion(self.leaf_hash, self.index, self.size, list(self.path), self.checkpoint.root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INCLUSION_PROOF_FORMAT,
            "position": {
                "topic": self.position.topic,
                "partition": self.position.partition,
                "offset": self.position.offset,
            },
            "leaf_hash": self.leaf_hash.hex(),
            "index": self.index,
            "tree_size": self.size,
            "path": [p.hex() for p in self.path],
            "checkpoint": self.checkpoint.to_dict(),
        }

    @classmethod
    def from_dict(cls, obj: object) -> InclusionProofFile:
        keys = {"format", "position", "leaf_hash", "index", "tree_size", "path", "checkpoint"}
        d = _exact_keys(obj, keys, "inclusion proof")
        if d["format"] != INCLUSION_PROOF_FORMAT:
            raise CheckpointFormatError(
                f"inclusion proof: format must be {INCLUSION_PROOF_FORMAT!r}, got {d['format']!r}"
            )
        pos = _exact_keys(d["position"], {"topic", "partition", "offset"}, "inclusion proof: position")
        path = d["path"]
        if not isinstance(path, list):
            raise CheckpointFormatError("inclusion proof: path must be a list of hex strings")
        return cls(
            position=EventPosition(pos["topic"], pos["partition"], pos["offset"]),
            leaf_hash=_strict_hex(d["leaf_hash"], "inclusion proof: leaf_hash"),
            index=d["index"],
            size=d["tree_size"],
            path=tuple(_strict_hex(p, f"inclusion proof: path[{i}]") for i, p in enumerate(path)),
            checkpoint=SignedCheckpoint.from_dict(d["checkpoint"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> InclusionProofFile:
        return cls.from_dict(_loads(text))


# --------------------------------------------------------------------------- helpers


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_hash(x: object) -> bool:
    return isinstance(x, bytes | bytearray) and len(x) == HASH_SIZE


def _str(x: object, what: str) -> str:
    if not isinstance(x, str):
        raise CheckpointFormatError(f"{what} must be a string, got {type(x).__name__}")
    return x


def _strict_b64(s: str, what: str) -> bytes:
    """Standard, padded base64 in its one canonical spelling (no stray bits, no whitespace)."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CheckpointFormatError(f"{what}: not valid standard base64: {s!r:.80}") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise CheckpointFormatError(f"{what}: non-canonical base64: {s!r:.80}")
    return raw


def _strict_hex(x: object, what: str) -> bytes:
    if not isinstance(x, str) or not re.fullmatch(r"[0-9a-f]{64}", x):
        raise CheckpointFormatError(f"{what}: must be 64 lowercase hex characters, got {x!r:.80}")
    return bytes.fromhex(x)


def _exact_keys(obj: object, keys: set[str], what: str) -> dict[str, Any]:
    try:
        return strict_json.exact_keys(obj, keys, what)
    except strict_json.StrictJSONError as exc:
        raise CheckpointFormatError(str(exc)) from None


def _loads(text: str | bytes) -> object:
    try:
        return strict_json.loads(text, "checkpoint JSON")
    except strict_json.StrictJSONError as exc:
        raise CheckpointFormatError(str(exc)) from None
