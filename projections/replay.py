"""Rebuild a read model by replaying the whole log: from a broker, an export file or a snapshot.

The read model is disposable: everything in it comes from the ledger, so the
compliance CLI (and anyone who doubts a projection) builds one from scratch with
the same apply code the live projector uses. Replaying into an existing database
file only applies what it has not seen (positions in ``projection_state``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tensafe.events import kafka_io
from tensafe.events.export import LedgerSnapshot, read_export
from tensafe.events.topics import LEDGER, partition_counts
from tensafe.projections.readmodel import ApplyResult, RawRecord, ReadModel

REPLAY_BATCH = 5000  # big batches: per-batch cost is a handful of DuckDB statements


def apply_snapshot(rm: ReadModel, snap: LedgerSnapshot, *, batch_size: int = REPLAY_BATCH) -> ApplyResult:
    """Apply every ledger record of a snapshot (export file order = log order)."""
    total = ApplyResult()
    for partition in sorted(snap.ledger):
        records = snap.ledger[partition]
        for i in range(0, len(records), batch_size):
            total += rm.apply(RawRecord(partition, off, raw) for off, raw in records[i : i + batch_size])
    return total


def rebuild_from_file(path: str | Path, db: str | Path | None = None) -> ReadModel:
    """A read model of an export file (``tensafe audit export``), with no broker."""
    return rebuild(read_export(path), db=db)


async def catch_up(
    rm: ReadModel,
    bootstrap: str,
    *,
    topic: str = LEDGER,
    partitions: list[int] | None = None,
    batch_size: int = REPLAY_BATCH,
) -> ApplyResult:
    """Apply every record a broker holds now (up to each partition's high watermark)."""
    if partitions is None:
        partitions = list(range((await partition_counts(bootstrap, [topic]))[topic]))
    total = ApplyResult()
    for p in partitions:
        batch: list[RawRecord] = []
        async for rec in kafka_io.read_partition(bootstrap, topic, p, start_offset=rm.next_offset(p)):
            batch.append(RawRecord(p, rec.offset, rec.value, rec.timestamp))
            if len(batch) >= batch_size:
                # In a thread: the consumer keeps fetching the next batch meanwhile.
                total += await asyncio.to_thread(rm.apply, batch)
                batch = []
        if batch:
            total += await asyncio.to_thread(rm.apply, batch)
    return total


async def arebuild(
    bootstrap: str, *, topic: str = LEDGER, topic_prefix: str = "", db: str | Path | None = None
) -> ReadModel:
    rm = ReadModel(db)
    try:
        await catch_up(rm, bootstrap, topic=topic_prefix + topic)
    except BaseException:
        rm.close()
        raise
    return rm


def rebuild(
    source: LedgerSnapshot | str, *, topic_prefix: str = "", db: str | Path | None = None
) -> ReadModel:
    """A read model rebuilt by replay from a snapshot (``read_export``/``collect``) or a
    bootstrap address ("host:port"). Sync: for async callers use :func:`arebuild`."""
    if isinstance(source, LedgerSnapshot):
        rm = ReadModel(db)
        try:
            apply_snapshot(rm, source)
        except BaseException:
            rm.close()
            raise
        return rm
    return asyncio.run(arebuild(source, topic_prefix=topic_prefix, db=db))
