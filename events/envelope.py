"""The ledger record: an Avro ``tensafe.ledger.Envelope`` around an event payload.

``read_header`` decodes only the leading fields (prev_hash .. event_type) by hand:
Avro binary is the plain concatenation of the fields in schema order, so a verifier
needs no full decoder to check the chain. That is what makes verification fast.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

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
        return codec.encode(ENVELOPE, self.__dict__)

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
        event_id=event_id or uuid.uuid4().hex,
        tenant_id=tenant_id,
        client_id=client_id,
        command_id=command_id,
        payload=codec.encode(full, payload),
    )


def decode_envelope(raw: bytes) -> Envelope:
    return Envelope(**codec.decode_as(ENVELOPE, raw))


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
