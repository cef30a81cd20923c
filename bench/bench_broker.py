"""Broker latency and throughput: aiokafka against the embedded Tansu (memory engine).

python -m bench.bench_broker [--quick]

* ``produce_ack_p50_ms`` / ``produce_ack_p99_ms``: sequential ``send_and_wait`` of
  1 KiB records, acks=all, raw aiokafka producer (linger 0), one partition.
* ``produce_msgs_per_s``: pipelined sends of 1 KiB records (``kafka_io.make_producer``,
  batched), from the first send to the last ack.
* ``consume_msgs_per_s``: ``kafka_io.read_partition`` of those records.
* ``roundtrip_p50_ms`` / ``roundtrip_p99_ms``: send one record and wait until an
  already-positioned follower (``kafka_io.follow_partition``) yields it.
* ``high_watermark_ms``: one ``kafka_io.high_watermark`` call (new consumer each time).

The bench starts and stops its own broker. On 2 shared cores the Python client,
not Tansu, is the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time

from aiokafka import AIOKafkaProducer
from tensafe.events import kafka_io
from tensafe.events.broker import EmbeddedBroker
from tensafe.events.topics import create_topics

RECORD = os.urandom(1024)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _bench(bootstrap: str, quick: bool) -> dict[str, float]:
    n_ack = 500 if quick else 3000
    n_pipe = 10_000 if quick else 50_000
    n_rt = 200 if quick else 1000
    await create_topics(bootstrap, {"bench.ack": 1, "bench.pipe": 1, "bench.rt": 1})
    out: dict[str, float] = {}

    # Sequential acks: the latency a ledger append waits for.
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0)
    await raw.start()
    try:
        for _ in range(50):  # warm-up: connections, metadata
            await raw.send_and_wait("bench.ack", RECORD, partition=0)
        lat = []
        for _ in range(n_ack):
            t0 = time.perf_counter()
            await raw.send_and_wait("bench.ack", RECORD, partition=0)
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        await raw.stop()
    out["produce_ack_p50_ms"] = round(statistics.median(lat), 3)
    out["produce_ack_p99_ms"] = round(_pct(lat, 0.99), 3)

    # Pipelined throughput.
    producer = kafka_io.make_producer(bootstrap, linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futs = [await producer.send("bench.pipe", RECORD, partition=0) for _ in range(n_pipe)]
        await asyncio.gather(*futs)
        out["produce_msgs_per_s"] = round(n_pipe / (time.perf_counter() - t0))
    finally:
        await producer.stop()

    t0 = time.perf_counter()
    n = 0
    async for _ in kafka_io.read_partition(bootstrap, "bench.pipe", 0):
        n += 1
    assert n == n_pipe, (n, n_pipe)
    out["consume_msgs_per_s"] = round(n / (time.perf_counter() - t0))

    hw = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert await kafka_io.high_watermark(bootstrap, "bench.pipe", 0) == n_pipe
        hw.append((time.perf_counter() - t0) * 1000)
    out["high_watermark_ms"] = round(statistics.median(hw), 3)

    # Round trip: produce → a live follower sees it.
    stop = asyncio.Event()
    seen: asyncio.Queue[float] = asyncio.Queue()

    async def follower() -> None:
        async for _ in kafka_io.follow_partition(
            bootstrap, "bench.rt", 0, start_offset="end", stop=stop, poll_ms=100
        ):
            seen.put_nowait(time.perf_counter())

    task = asyncio.create_task(follower())
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=0
    )
    await producer.start()
    try:
        await asyncio.sleep(0.5)  # follower positioned at the end
        rts = []
        for i in range(n_rt + 20):
            t0 = time.perf_counter()
            await producer.send("bench.rt", RECORD, partition=0)
            t1 = await asyncio.wait_for(seen.get(), 10)
            if i >= 20:  # warm-up
                rts.append((t1 - t0) * 1000)
    finally:
        stop.set()
        await producer.stop()
        await asyncio.wait_for(task, 5)
    out["roundtrip_p50_ms"] = round(statistics.median(rts), 3)
    out["roundtrip_p99_ms"] = round(_pct(rts, 0.99), 3)
    return out


def run(quick: bool) -> dict[str, float]:
    with EmbeddedBroker("memory") as broker:
        return asyncio.run(_bench(broker.bootstrap, quick))


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
