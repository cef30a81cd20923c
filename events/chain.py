"""The hash chain of one ledger partition and the rules every reader applies.

    hash_n      = SHA-256(prev_hash_n || stored_bytes_n)
    prev_hash_0 = SHA-256(b"tensafe/ledger/v1/genesis/" || decimal(partition))

A record is *accepted* when it links (its seq is the next one and its prev_hash is
the current tail) and its epoch is legal. Readers apply the same rules in log order,
so every reader derives the same chain. The rules (docs/LEDGER_SPEC.md):

* epoch < current epoch          -> STALE_EPOCH: a fenced writer; rejected.
* links, WriterClaimed, epoch up -> accepted, the epoch rises (the fence).
* links, any other type          -> accepted if its epoch equals the current epoch.
* WriterClaimed that does not link but raises the epoch -> LOST_CLAIM: a claim that
  lost a race with a late write of the old owner; ignored (the claimant re-claims).
* same seq and same hash as an accepted record -> DUPLICATE (a producer retry); ignored.
* anything else                  -> BROKEN: the chain is damaged at this record.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from hashlib import sha256

from tensafe.events.envelope import EVENT_NS, Header, HeaderError, envelope_fingerprint, read_header

GENESIS_DOMAIN = b"tensafe/ledger/v1/genesis/"
CLAIM_TYPE = EVENT_NS + "WriterClaimed"


_CLAIM_BYTES = CLAIM_TYPE.encode()


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = acc = 0
    while True:
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if b < 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7


def genesis_hash(partition: int) -> bytes:
    return hashlib.sha256(GENESIS_DOMAIN + str(partition).encode()).digest()


def event_hash(prev_hash: bytes, stored: bytes) -> bytes:
    return hashlib.sha256(prev_hash + stored).digest()


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE_EPOCH = "stale_epoch"
    LOST_CLAIM = "lost_claim"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    header: Header | None
    hash: bytes | None  # chain hash when accepted
    reason: str = ""


class ChainState:
    """Running state of one partition's chain: tail, next seq, epoch, accepted hashes."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.next_seq = 0
        self.tail_hash = genesis_hash(partition)
        self.epoch = 0
        self._hashes = bytearray()  # 32 bytes per accepted record, index = seq
        self._fp = envelope_fingerprint()

    @classmethod
    def restore(cls, partition: int, hashes: bytes, epoch: int) -> ChainState:
        """A state positioned after ``hashes`` (32 bytes per accepted record, by seq),
        e.g. persisted by a projection. All hashes are kept so an exact duplicate of an
        old record is still recognised after a restart."""
        if len(hashes) % 32:
            raise ValueError("hashes must be a multiple of 32 bytes")
        st = cls(partition)
        if hashes:
            st._hashes = bytearray(hashes)
            st.next_seq = len(hashes) // 32
            st.tail_hash = bytes(hashes[-32:])
        st.epoch = epoch
        return st

    def hash_at(self, seq: int) -> bytes:
        if seq == -1:
            return genesis_hash(self.partition)
        return bytes(self._hashes[32 * seq : 32 * seq + 32])

    def hashes(self) -> list[bytes]:
        h = self._hashes
        return [bytes(h[i : i + 32]) for i in range(0, len(h), 32)]

    def try_accept(self, raw: bytes) -> bytes | None:
        """The common case, fast: a non-claim record of the current epoch that links.

        Returns its chain hash (the record is accepted), or None: then call ``feed``,
        which applies every rule and names the verdict. Same rules, fewer objects.
        """
        if raw[10:42] != self.tail_hash or raw[2:10] != self._fp or raw[:2] != b"\xc3\x01":
            return None
        try:
            pos = 42
            b = raw[pos]
            if b >= 0x80 or (b >> 1) ^ -(b & 1) != self.partition:
                return None
            seq, pos = _varint(raw, pos + 1)
            if seq != self.next_seq:
                return None
            epoch, pos = _varint(raw, pos)
            if epoch != self.epoch:
                return None
            n, pos = _varint(raw, pos)
            if raw[pos : pos + n] == _CLAIM_BYTES:
                return None
        except IndexError:
            return None
        digest = sha256(self.tail_hash + raw).digest()
        self.tail_hash = digest
        self.next_seq += 1
        self._hashes += digest
        return digest

    def feed(self, raw: bytes) -> Outcome:
        try:
            h = read_header(raw, self._fp)
        except HeaderError as exc:
            return Outcome(Verdict.BROKEN, None, None, f"malformed: {exc}")
        if h.partition != self.partition:
            return Outcome(Verdict.BROKEN, h, None, f"misplaced: record names partition {h.partition}")
        if h.epoch < self.epoch:
            return Outcome(Verdict.STALE_EPOCH, h, None, f"epoch {h.epoch} < current {self.epoch}")
        is_claim = h.event_type == CLAIM_TYPE
        if h.seq == self.next_seq and h.prev_hash == self.tail_hash:
            if is_claim and h.epoch <= self.epoch:
                return Outcome(
                    Verdict.BROKEN,
                    h,
                    None,
                    f"bad_epoch: claim of epoch {h.epoch} does not raise {self.epoch}",
                )
            if not is_claim and h.epoch != self.epoch:
                return Outcome(Verdict.BROKEN, h, None, f"bad_epoch: epoch {h.epoch} without a claim")
            digest = event_hash(self.tail_hash, raw)
            self._accept(h, digest)
            return Outcome(Verdict.ACCEPTED, h, digest)
        if is_claim and h.epoch > self.epoch:
            return Outcome(Verdict.LOST_CLAIM, h, None, "claim does not link to the tail")
        if 0 <= h.seq < self.next_seq and self.hash_at(h.seq) == event_hash(h.prev_hash, raw):
            return Outcome(Verdict.DUPLICATE, h, None, "exact duplicate of an accepted record")
        return Outcome(Verdict.BROKEN, h, None, f"does not link (seq {h.seq}, expected {self.next_seq})")

    def _accept(self, h: Header, digest: bytes) -> None:
        if h.event_type == CLAIM_TYPE:
            self.epoch = h.epoch
        self.tail_hash = digest
        self.next_seq += 1
        self._hashes += digest
