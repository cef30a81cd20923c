"""The ledger record: an Avro ``tensafe.ledger.Envelope`` around an event payload.

``read_header`` decodes only the leading fields (prev_hash .. event_type) by hand:
Avro binary is the plain concatenation of the fields in schema order, so a verifier
needs no full decoder to check the chain. That is what makes verification fast.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

from tensafe.events import codec

ENVELOPE = "tensafe.ledger.Envelope"
EVENT_NS = "tensafe.event."


@dataclass(frozen=True)
class Envelope:
    prev_hash: bytes
    partition: int
    seq: int
    epoch: int
    event_type: str  # full schema name of the payload
    ts_ms: int
    event_id: str
    tenant_id: str
    client_id: str
    command_id: str | None
    payload: bytes  # SOE of the event record

    def encode(self) -> bytes:
        """Avro single-object encoding, written by hand (same bytes as fastavro; a test
        checks it) because the writer's hot path encodes one envelope per event."""
        out = bytearray(codec.SOE_MAGIC)
        out += envelope_fingerprint()
        if len(self.prev_hash) != 32:
            raise ValueError("prev_hash must be 32 bytes")
        out += self.prev_hash
        _put_long(out, self.partition)
        _put_long(out, self.seq)
        _put_long(out, self.epoch)
        _put_bytes(out, self.event_type.encode())
        _put_long(out, self.ts_ms)
        _put_bytes(out, self.event_id.encode())
        _put_bytes(out, self.tenant_id.encode())
        _put_bytes(out, self.client_id.encode())
        if self.command_id is None:
            out.append(0)
        else:
            out.append(2)  # union branch 1, zig-zag encoded
            _put_bytes(out, self.command_id.encode())
        _put_bytes(out, self.payload)
        return bytes(out)

    def payload_record(self) -> dict:
        return codec.decode_as(self.event_type, self.payload)

    @property
    def short_type(self) -> str:
        return self.event_type.removeprefix(EVENT_NS)


def make_envelope(
    *,
    prev_hash: bytes,
    partition: int,
    seq: int,
    epoch: int,
    event_type: str,
    payload: dict,
    tenant_id: str,
    client_id: str,
    command_id: str | None,
    ts_ms: int | None = None,
    event_id: str | None = None,
) -> Envelope:
    full = event_type if "." in event_type else EVENT_NS + event_type
    return Envelope(
        prev_hash=prev_hash,
        partition=partition,
        seq=seq,
        epoch=epoch,
        event_type=full,
        ts_ms=ts_ms if ts_ms is not None else int(time.time() * 1000),
        event_id=event_id or os.urandom(16).hex(),
        tenant_id=tenant_id,
        client_id=client_id,
        command_id=command_id,
        payload=codec.encode(full, payload),
    )


def _put_long(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)  # zig-zag
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_bytes(out: bytearray, b: bytes) -> None:
    _put_long(out, len(b))
    out += b


def decode_envelope(raw: bytes) -> Envelope:
    """Decode a stored envelope: by hand when the fingerprint is the current envelope
    schema (~10x faster than fastavro), else through the codec (older versions)."""
    if raw[2:10] == envelope_fingerprint() and raw[:2] == codec.SOE_MAGIC:
        try:
            return _decode_by_hand(raw)
        except (ValueError, IndexError, UnicodeDecodeError):
            pass  # fall through: the codec names what is wrong
    return Envelope(**codec.decode_as(ENVELOPE, raw))


def _blob(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _zigzag(buf, pos)
    end = pos + n
    if n < 0 or end > len(buf):
        raise ValueError("bad length")
    return buf[pos:end], end


def _decode_by_hand(raw: bytes) -> Envelope:
    """Field layout of docs/LEDGER_SPEC.md's envelope table, in schema order."""
    prev_hash = raw[10:42]
    partition, pos = _zigzag(raw, 42)
    seq, pos = _zigzag(raw, pos)
    epoch, pos = _zigzag(raw, pos)
    event_type, pos = _blob(raw, pos)
    ts_ms, pos = _zigzag(raw, pos)
    event_id, pos = _blob(raw, pos)
    tenant_id, pos = _blob(raw, pos)
    client_id, pos = _blob(raw, pos)
    branch, pos = _zigzag(raw, pos)  # union {null, string}
    command_id = None
    if branch == 1:
        cid, pos = _blob(raw, pos)
        command_id = cid.decode()
    elif branch != 0:
        raise ValueError("bad union branch")
    payload, pos = _blob(raw, pos)
    if pos != len(raw) or len(prev_hash) != 32:
        raise ValueError("trailing bytes")
    return Envelope(
        bytes(prev_hash), partition, seq, epoch, event_type.decode(), ts_ms, event_id.decode(),
        tenant_id.decode(), client_id.decode(), command_id, bytes(payload),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Header:
    prev_hash: bytes
    partition: int
    seq: int
    epoch: int
    event_type: str


class HeaderError(ValueError):
    pass


def _zigzag(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    acc = 0
    while True:
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if b < 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise HeaderError("varint too long")


@lru_cache(maxsize=1)
def envelope_fingerprint() -> bytes:
    return codec.schema(ENVELOPE).fingerprint


def read_header(raw: bytes, fingerprint: bytes | None = None) -> Header:
    """Decode prev_hash, partition, seq, epoch, event_type from the stored bytes."""
    fp = fingerprint or envelope_fingerprint()
    if raw[:2] != codec.SOE_MAGIC or raw[2:10] != fp:
        raise HeaderError("not a tensafe.ledger.Envelope (magic or schema fingerprint differs)")
    if len(raw) < 47:
        raise HeaderError("record too short")
    try:
        # One-byte varints (values -64..63) are the common case; inline them (verify speed).
        pos = 42
        b = raw[pos]
        if b < 0x80:
            partition = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            partition, pos = _zigzag(raw, pos)
        seq, pos = _zigzag(raw, pos)
        b = raw[pos]
        if b < 0x80:
            epoch = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            epoch, pos = _zigzag(raw, pos)
        b = raw[pos]
        if b < 0x80:
            n = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            n, pos = _zigzag(raw, pos)
        if n < 0 or pos + n > len(raw):
            raise HeaderError("bad event_type length")
        event_type = raw[pos : pos + n].decode()
    except (IndexError, UnicodeDecodeError) as exc:
        raise HeaderError(f"truncated or corrupt header: {exc}") from exc
    return Header(raw[10:42], partition, seq, epoch, event_type)
