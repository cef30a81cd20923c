"""Collect ledger and checkpoint records from a broker, or from an export file.

``tensafe audit export`` writes every record of the ledger and checkpoint topics to
an Avro object container file (schema ``tensafe.export.ExportedRecord``) with the
stored bytes untouched, so ``tensafe audit verify --file`` recomputes the same
hashes offline with no broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fastavro
from tensafe.events import codec, kafka_io
from tensafe.events.checkpoints import CheckpointRecord
from tensafe.events.topics import CHECKPOINTS, LEDGER, partition_counts

EXPORT_SCHEMA = "tensafe.export.ExportedRecord"


@dataclass
class LedgerSnapshot:
    """Raw ledger records per partition (offset, bytes) plus decoded checkpoints."""

    ledger: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    bad_checkpoint_records: list[tuple[int, int, str]] = field(default_factory=list)
    exported: list[dict] = field(default_factory=list, repr=False)

    def add(
        self, topic_kind: str, topic: str, partition: int, offset: int, ts: int, key, value: bytes
    ) -> None:
        self.exported.append(
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "timestamp_ms": ts,
                "key": key,
                "value": value,
            }
        )
        if topic_kind == "ledger":
            self.ledger.setdefault(partition, []).append((offset, value))
        else:
            try:
                self.checkpoints.append(CheckpointRecord.decode(value))
            except codec.DecodeError as exc:
                self.bad_checkpoint_records.append((partition, offset, str(exc)))


async def collect(bootstrap: str, topic_prefix: str = "") -> LedgerSnapshot:
    snap = LedgerSnapshot()
    names = {"ledger": topic_prefix + LEDGER, "checkpoints": topic_prefix + CHECKPOINTS}
    counts = await partition_counts(bootstrap, names.values())
    for kind, name in names.items():
        for partition in range(counts[name]):
            if kind == "ledger":
                snap.ledger.setdefault(partition, [])
            async for rec in kafka_io.read_partition(bootstrap, name, partition):
                snap.add(kind, name, partition, rec.offset, rec.timestamp, rec.key, rec.value)
    return snap


def write_export(path: str | Path, snap: LedgerSnapshot) -> int:
    parsed = codec.schema(EXPORT_SCHEMA).parsed
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as fh:
        fastavro.writer(fh, parsed, snap.exported, codec="null", metadata={"tensafe.export": "v1"})
    tmp.replace(path)
    return len(snap.exported)


def iter_export(path: str | Path) -> Iterator[dict]:
    with open(path, "rb") as fh:
        yield from fastavro.reader(fh)


def read_export(path: str | Path) -> LedgerSnapshot:
    snap = LedgerSnapshot()
    for rec in iter_export(path):
        topic = rec["topic"]
        kind = "ledger" if topic.endswith(LEDGER) else "checkpoints" if topic.endswith(CHECKPOINTS) else None
        if kind is None:
            continue
        snap.add(kind, topic, rec["partition"], rec["offset"], rec["timestamp_ms"], rec["key"], rec["value"])
    # File order is log order: a reordered file must fail verification, so no sorting here.
    return snap
