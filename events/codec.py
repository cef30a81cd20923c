"""Avro single-object encoding (SOE) for every message TenSafe writes.

Layout of one message (Avro spec, "Single-object encoding"):

    C3 01 | CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
            8 bytes little-endian | Avro binary body

Schemas are loaded from the ``tensafe.schemas`` package: every ``*.avsc`` file holds
one named record. Superseded versions live in ``schemas/history/`` so data written
under an old version still decodes (resolved to the current version).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

SOE_MAGIC = b"\xc3\x01"
HEADER_LEN = 10  # magic (2) + fingerprint (8)

_EMPTY = 0xC15D213AA4D7A795  # the CRC-64-AVRO seed from the Avro spec


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _fp_table()


def rabin_fingerprint(canonical_form: bytes) -> int:
    """CRC-64-AVRO (Rabin) fingerprint, exactly as the Avro specification defines it."""
    fp = _EMPTY
    for b in canonical_form:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # full name, e.g. tensafe.event.OptimStepApplied
    parsed: Any  # fastavro parsed schema
    canonical: str
    fingerprint: bytes  # 8 bytes little-endian
    current: bool


class SchemaRegistry:
    """All schemas the process knows, by full name and by fingerprint."""

    def __init__(self) -> None:
        self.current: dict[str, SchemaVersion] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}

    def add(self, schema_json: dict, current: bool) -> SchemaVersion:
        # The default write hint marks the schema as parsed; without it fastavro re-parses
        # on every write (2x slower). The canonical form is the same either way.
        parsed = fastavro.parse_schema(schema_json)
        canonical = to_parsing_canonical_form(parsed)
        fp = rabin_fingerprint(canonical.encode()).to_bytes(8, "little")
        name = parsed["name"]
        version = SchemaVersion(name, parsed, canonical, fp, current)
        if current:
            if name in self.current:
                raise ValueError(f"schema {name} defined twice")
            self.current[name] = version
        self.by_fingerprint.setdefault(fp, version)
        return version

    def schema(self, name: str) -> SchemaVersion:
        try:
            return self.current[name]
        except KeyError:
            raise KeyError(f"unknown schema {name!r}") from None


def _load_dir(registry: SchemaRegistry, folder, current: bool) -> None:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".avsc") and entry.is_file():
            registry.add(json.loads(entry.read_text()), current=current)


@lru_cache(maxsize=1)
def registry() -> SchemaRegistry:
    reg = SchemaRegistry()
    root = resources.files("tensafe.schemas")
    _load_dir(reg, root, current=True)
    history = root / "history"
    if history.is_dir():
        _load_dir(reg, history, current=False)
    return reg


def schema(name: str) -> SchemaVersion:
    return registry().schema(name)


def encode_body(name: str, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema(name).parsed, record)
    return buf.getvalue()


def encode(name: str, record: dict) -> bytes:
    """Single-object encoding of ``record`` under the current schema ``name``."""
    sv = schema(name)
    buf = io.BytesIO()
    buf.write(SOE_MAGIC)
    buf.write(sv.fingerprint)
    fastavro.schemaless_writer(buf, sv.parsed, record)
    return buf.getvalue()


class DecodeError(ValueError):
    """The bytes are not a single-object encoded message of a known schema."""


def fingerprint_of(data: bytes) -> bytes:
    if len(data) < HEADER_LEN or data[:2] != SOE_MAGIC:
        raise DecodeError("not Avro single-object encoding (bad magic)")
    return bytes(data[2:HEADER_LEN])


def decode(data: bytes) -> tuple[str, dict]:
    """Decode a single-object encoded message; returns (schema full name, record)."""
    fp = fingerprint_of(data)
    writer = registry().by_fingerprint.get(fp)
    if writer is None:
        raise DecodeError(f"unknown schema fingerprint {fp.hex()}")
    reader = registry().current.get(writer.name, writer)
    try:
        record = fastavro.schemaless_reader(
            io.BytesIO(data[HEADER_LEN:]), writer.parsed, reader.parsed if reader is not writer else None
        )
    except Exception as exc:  # fastavro raises a zoo of types on bad bodies
        raise DecodeError(f"{writer.name}: body does not decode ({exc})") from exc
    return writer.name, record


def decode_as(name: str, data: bytes) -> dict:
    got, record = decode(data)
    if got != name:
        raise DecodeError(f"expected {name}, got {got}")
    return record
