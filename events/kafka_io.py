"""Small aiokafka helpers that behave the same on Tansu and on Apache Kafka.

Tansu caveats these helpers work around (Tansu 0.6.0 + aiokafka 0.14):

* ListOffsets(latest) is wrong when the last batch holds more than one record: it
  answers ``base_offset_of_last_batch + 1``. So ``consumer.end_offsets``,
  ``seek_to_end`` and ``auto_offset_reset="latest"`` are wrong. The high
  watermark in a *Fetch* response is right: :func:`high_watermark` fetches the
  last batch and reads it from there.
* A fetch beyond the end returns no records and no OFFSET_OUT_OF_RANGE (Kafka
  returns the error). Readers here handle both.
* No InitProducerId: idempotent and transactional producers fail. Producers are
  plain ``acks="all"``; a retried send may duplicate a record, so consumers must be
  idempotent (the ledger deduplicates by command id and hash chain).
* Any Metadata request naming an unknown topic auto-creates it with 4 partitions
  (aiokafka asks with ``allow_auto_topic_creation=True``); so does a producer
  sending to it. Create topics with :func:`tensafe.events.topics.ensure_topics`
  first, and beware of typos in topic names.
* Fetch long-polls do not end when data arrives: a caught-up consumer's pending
  fetch is answered only when its wait runs out (measured: about half of
  ``fetch_max_wait_ms``, i.e. up to ~250 ms with aiokafka's default 500 ms), and
  a record appended meanwhile waits for it. ``fetch_max_wait_ms`` is therefore
  the latency knob: consumers here use 20 ms, readers 10 ms. And
  ``fetch_max_wait_ms=0`` gets no fetch answer at all (the consumer silently sees
  nothing, forever): never use 0.
* Consumer groups: a join takes about half the session timeout, so groups use a
  10 s session / 1 s heartbeat (not Faust's 60 s).

Producers and consumers returned here are *not* started: ``await x.start()`` and
``await x.stop()`` (or ``async with``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

__all__ = [
    "MAX_REQUEST_SIZE",
    "ConsumerRecord",
    "follow_partition",
    "high_watermark",
    "high_watermarks",
    "make_consumer",
    "make_producer",
    "read_partition",
]

MAX_REQUEST_SIZE = 1024 * 1024  # Kafka's default message.max.bytes is ~1 MiB: stay within it
_ids = itertools.count(1)


def _client_id(kind: str, client_id: str | None) -> str:
    return client_id or f"tensafe-{kind}-{next(_ids)}"


def make_producer(
    bootstrap: str,
    *,
    client_id: str | None = None,
    linger_ms: int = 1,
    max_request_size: int = MAX_REQUEST_SIZE,
    **overrides: Any,
) -> AIOKafkaProducer:
    """A durable-ack producer (not started).

    acks="all" because the log is the system of record. Idempotence is off: Tansu
    has no InitProducerId, and aiokafka would fail at start. A small linger lets
    pipelined sends share batches without adding noticeable latency to a lone
    ``send_and_wait``. aiokafka keeps one batch in flight per partition, so order
    within a partition is preserved even across retries.
    """
    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": _client_id("producer", client_id),
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": linger_ms,
        "max_request_size": max_request_size,
        "max_batch_size": 64 * 1024,
        "compression_type": None,  # Avro payloads are small and partly ciphertext
        "request_timeout_ms": 30000,
    }
    cfg.update(overrides)
    return AIOKafkaProducer(**cfg)


def make_consumer(
    bootstrap: str,
    group_id: str | None = None,
    *,
    topics: Iterable[str] = (),
    client_id: str | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer (not started) with manual commits and Tansu-friendly group timing.

    ``topics`` subscribes (needs a group for partition assignment); leave it empty
    and call ``assign()`` for a group-less reader. ``auto_offset_reset="earliest"``
    because "latest" is wrong on Tansu (see module doc) and a new group of an
    event log should start at the beginning anyway.
    """
    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": _client_id("consumer", client_id),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 10000,
        "heartbeat_interval_ms": 1000,
        # On Tansu the long-poll always runs to this bound when there is nothing new,
        # so it is also the latency of a caught-up consumer (aiokafka default: 500).
        "fetch_max_wait_ms": 20,
        "max_partition_fetch_bytes": 4 * MAX_REQUEST_SIZE,
        "isolation_level": "read_uncommitted",  # no transactions exist on Tansu
    }
    cfg.update(overrides)
    if cfg["fetch_max_wait_ms"] < 1:
        raise ValueError("fetch_max_wait_ms must be >= 1: Tansu never answers a fetch with max wait 0")
    return AIOKafkaConsumer(*topics, **cfg)


def _reader(bootstrap: str, max_wait_ms: int = 10) -> AIOKafkaConsumer:
    # "none": on Kafka a position past the end raises instead of silently
    # resetting to offset 0 and re-reading everything. Short max wait: an empty
    # fetch (empty partition, caught-up follower) costs the full wait on Tansu.
    return make_consumer(bootstrap, None, auto_offset_reset="none", fetch_max_wait_ms=max_wait_ms)


async def _fetched_highwaters(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float
) -> dict[TopicPartition, int]:
    """High watermarks of assigned ``tps`` taken from Fetch responses. Moves positions.

    Why not ``end_offsets``: on Tansu ListOffsets(latest) answers the base offset of
    the last batch + 1, too low whenever that batch holds several records. It is
    never too high, so fetching from one below it returns (at most) the last batch,
    and every Fetch response carries the true high watermark (also right on Kafka).
    """
    approx = await consumer.end_offsets(tps)
    before = {}
    for tp in tps:
        consumer.seek(tp, max(approx[tp] - 1, 0))
        before[tp] = consumer.last_poll_timestamp(tp)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            # Only the responses' high watermarks matter, not the records.
            await consumer.getmany(*tps, timeout_ms=100, max_records=1)
        except OffsetOutOfRangeError as e:
            for tp in e.args[0] if e.args and isinstance(e.args[0], dict) else tps:
                consumer.seek(tp, 0)  # Kafka retention moved the log start past us: any fetch will do
        out = {}
        for tp in tps:
            hw, ts = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
            if hw is not None and ts is not None and ts != before[tp]:
                out[tp] = hw
        if len(out) == len(tps):
            return out
        if loop.time() > deadline:
            raise TimeoutError(f"no fetch response for {sorted(set(tps) - set(out))} within {timeout}s")


async def high_watermark(bootstrap: str, topic: str, partition: int, *, timeout: float = 30.0) -> int:
    """Offset the next record appended to ``topic``/``partition`` will get (= count
    of records when nothing was ever deleted). Correct on Tansu, unlike end_offsets."""
    return (await high_watermarks(bootstrap, topic, [partition], timeout=timeout))[partition]


async def high_watermarks(
    bootstrap: str, topic: str, partitions: Iterable[int], *, timeout: float = 30.0
) -> dict[int, int]:
    """High watermarks of several partitions of one topic, with one consumer."""
    consumer = _reader(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        hws = await _fetched_highwaters(consumer, tps, timeout)
        return {tp.partition: hw for tp, hw in hws.items()}
    finally:
        await consumer.stop()


async def read_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    start_offset: int = 0,
    until_offset: int | None = None,
    *,
    timeout: float = 30.0,
    max_records: int = 2000,
) -> AsyncIterator[ConsumerRecord]:
    """Yield the records of one partition in offset order, from ``start_offset``
    up to ``until_offset`` (exclusive) or, if None, to the high watermark at the time
    of the call (records appended while reading are not included: a snapshot).

    If ``until_offset`` lies beyond the current end, waits for the records to be
    written; ``timeout`` bounds the time without progress (TimeoutError).

    Use ``contextlib.aclosing`` (or read to the end) so the consumer is closed
    promptly when you stop early.
    """
    if start_offset < 0:
        raise ValueError("start_offset must be >= 0")
    tp = TopicPartition(topic, partition)
    consumer = _reader(bootstrap)
    await consumer.start()
    try:
        consumer.assign([tp])
        if until_offset is not None:
            end = until_offset
        else:
            end = (await _fetched_highwaters(consumer, [tp], timeout))[tp]
        if start_offset >= end:
            return
        consumer.seek(tp, start_offset)
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while True:
            # position(), not "last offset + 1": aiokafka moves it past offsets that
            # hold no data record (Kafka transaction markers), where we'd wait forever.
            pos = await consumer.position(tp)
            if pos >= end:
                return
            try:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=max_records)
            except OffsetOutOfRangeError:
                await _out_of_range(consumer, tp, pos)
                batch = {}
            records = batch.get(tp, ())
            for rec in records:
                if rec.offset >= end:
                    return
                yield rec
            if records:
                last_progress = loop.time()
            elif loop.time() - last_progress > timeout:
                raise TimeoutError(f"{tp}: no records for {timeout}s at offset {pos}, expected up to {end}")
    finally:
        await consumer.stop()


async def _out_of_range(consumer: AIOKafkaConsumer, tp: TopicPartition, pos: int) -> None:
    """Kafka answered OFFSET_OUT_OF_RANGE (Tansu never does: it returns nothing).

    Past the end: the records are not written yet, wait and retry. Before the log
    start: they were deleted (retention), which must never happen to the ledger.
    """
    begin = (await consumer.beginning_offsets([tp]))[tp]
    if pos < begin:
        raise LookupError(f"{tp}: offset {pos} was deleted (log starts at {begin}); check retention.ms=-1")
    await asyncio.sleep(0.1)
    consumer.seek(tp, pos)


async def follow_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    start_offset: int | Literal["end"] = 0,
    *,
    stop: asyncio.Event | None = None,
    poll_ms: int = 200,
    max_wait_ms: int = 20,
    max_records: int = 2000,
) -> AsyncIterator[ConsumerRecord]:
    """Yield records from ``start_offset`` on, forever: existing ones, then each new
    record as it is appended. Ends when ``stop`` is set (checked at least every
    ``poll_ms``) or when the caller closes the generator.

    ``start_offset="end"`` starts at the high watermark (only new records), computed
    from a fetch since ``seek_to_end`` is wrong on Tansu. It is resolved lazily, when
    the generator first runs: to be sure to see a record you are about to cause
    (a command's result), take ``await high_watermark(...)`` *before* causing it and
    pass that offset.

    ``max_wait_ms`` is the fetch long-poll: on Tansu a new record waits up to that
    long (see module doc), so it trades latency for idle fetch requests.

    For futures and projections. Wrap in ``contextlib.aclosing`` when you may break
    out of the loop, so the consumer is closed at once.
    """
    async for rec in follow_partitions(
        bootstrap,
        topic,
        {partition: start_offset},
        stop=stop,
        poll_ms=poll_ms,
        max_wait_ms=max_wait_ms,
        max_records=max_records,
    ):
        yield rec


async def follow_partitions(
    bootstrap: str,
    topic: str,
    start_offsets: dict[int, int | Literal["end"]],
    *,
    stop: asyncio.Event | None = None,
    poll_ms: int = 200,
    max_wait_ms: int = 20,
    max_records: int = 2000,
) -> AsyncIterator[ConsumerRecord]:
    """``follow_partition`` for several partitions of one topic with ONE consumer: one
    fetch request covers them all, so a process following N partitions pays one idle
    long-poll instead of N (on Tansu idle fetches are the main idle CPU cost). Records
    of each partition come in offset order; partitions interleave."""
    tps = {p: TopicPartition(topic, p) for p in start_offsets}
    consumer = _reader(bootstrap, max_wait_ms)
    await consumer.start()
    try:
        consumer.assign(list(tps.values()))
        ends = [tp for p, tp in tps.items() if start_offsets[p] == "end"]
        highs = await _fetched_highwaters(consumer, ends, 30.0) if ends else {}
        next_offset: dict[TopicPartition, int] = {}
        for p, tp in tps.items():
            start = highs[tp] if start_offsets[p] == "end" else int(start_offsets[p])
            if start < 0:
                raise ValueError("start_offset must be >= 0")
            consumer.seek(tp, start)
            next_offset[tp] = start
        while stop is None or not stop.is_set():
            try:
                batch = await consumer.getmany(*tps.values(), timeout_ms=poll_ms, max_records=max_records)
            except OffsetOutOfRangeError as exc:
                for tp in getattr(exc, "args", [{}])[0] or tps.values():
                    if tp in next_offset:
                        await _out_of_range(consumer, tp, next_offset[tp])
                continue
            for tp, recs in batch.items():
                for rec in recs:
                    next_offset[tp] = rec.offset + 1
                    yield rec
                    if stop is not None and stop.is_set():
                        return
    finally:
        await consumer.stop()
