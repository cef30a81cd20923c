"""Projection benchmarks: live lag (append ack -> row visible) and replay throughput.

python -m bench.bench_projection [--quick]

* projection_lag_p50_ms / projection_lag_p99_ms: a LedgerWriter appends one event at a
  time at a steady rate (4 partitions, real embedded broker); the asyncio projector
  follows into an in-memory read model. Lag = time from the append's ack (acks=all)
  to the commit of the DuckDB transaction holding its row (a committed row is
  visible to every query). The faust projector's lag is measured too in full mode.
* projection_rows_per_s: replay of an export snapshot into a fresh read model
  (chain check, decode, derived tables, one transaction per 5,000 records).
* projection_replay_broker_rows_per_s: the same, read from the broker.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid

PARTITIONS = 4


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _lag(bootstrap: str, n: int, rate: float, engine: str) -> dict[str, float]:
    from tensafe.events.ledger import LedgerWriter
    from tensafe.events.topics import ensure_topics
    from tensafe.projections import synthetic
    from tensafe.projections.projector import run_faust_projector, run_projector
    from tensafe.projections.readmodel import ReadModel

    prefix = f"benchproj{uuid.uuid4().hex[:8]}."
    names = await ensure_topics(bootstrap, partitions=PARTITIONS, topic_prefix=prefix)
    writers = [
        LedgerWriter(bootstrap, p, topic=names.ledger, checkpoint_topic=names.checkpoints)
        for p in range(PARTITIONS)
    ]
    for w in writers:
        await w.start()
    # Visibility times by (partition, seq): a listener runs right after each commit.
    visible: dict[tuple[int, int], float] = {}
    committed = dict.fromkeys(range(PARTITIONS), 0)

    def on_commit(done: dict[int, int]) -> None:
        now = time.perf_counter()
        for p, next_seq in done.items():
            for seq in range(committed[p], next_seq):
                visible[(p, seq)] = now
            committed[p] = next_seq

    rm = ReadModel()
    rm.add_listener(on_commit)
    stop = asyncio.Event()
    runner = run_projector if engine == "asyncio" else run_faust_projector
    task = asyncio.create_task(runner(bootstrap, rm, stop, topic=names.ledger))
    try:
        # Wait for the claims to be visible: the projector is up (Faust has joined its group).
        while sum(committed.values()) < PARTITIONS:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        events = synthetic.workload(n, PARTITIONS)
        queues = {p: list(evs) for p, evs in events.items()}
        order = []
        while any(queues.values()):  # interleave the partitions like concurrent clients
            for p in range(PARTITIONS):
                if queues[p]:
                    order.append((p, queues[p].pop(0)))
        order = order[:n]
        acked: dict[tuple[int, int], float] = {}
        t0 = time.perf_counter()
        for i, (p, ev) in enumerate(order):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            res = await writers[p].append_many([ev])
            acked[(p, res[0].seq)] = time.perf_counter()
        deadline = time.perf_counter() + 30
        while not all(k in visible for k in acked):
            if time.perf_counter() > deadline:
                raise TimeoutError("projection did not catch up")
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        for w in writers:
            await w.stop()
        rm.close()
    lags = [max(visible[k] - t, 0.0) * 1000 for k, t in acked.items()]
    return {"p50": statistics.median(lags), "p99": _pct(lags, 0.99), "max": max(lags), "n": len(lags)}


async def _broker_replay(bootstrap: str, chains: dict[int, list[bytes]]) -> float:
    from tensafe.events import kafka_io
    from tensafe.events.topics import ensure_topics
    from tensafe.projections.replay import arebuild

    prefix = f"benchreplay{uuid.uuid4().hex[:8]}."
    names = await ensure_topics(bootstrap, partitions=PARTITIONS, topic_prefix=prefix)
    producer = kafka_io.make_producer(bootstrap)
    await producer.start()
    try:
        for p, raws in chains.items():
            futs = [await producer.send(names.ledger, raw, partition=p) for raw in raws]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()
    t0 = time.perf_counter()
    rm = await arebuild(bootstrap, topic_prefix=prefix)
    elapsed = time.perf_counter() - t0
    n = rm.count("ledger_events")
    rm.close()
    return n / elapsed


def run(quick: bool) -> dict[str, float]:
    from tensafe.events.broker import EmbeddedBroker
    from tensafe.projections import synthetic
    from tensafe.projections.replay import rebuild

    n_replay = 20_000 if quick else 100_000
    chains = {
        p: synthetic.chain_records(p, evs) for p, evs in synthetic.workload(n_replay, PARTITIONS).items()
    }
    total = sum(len(v) for v in chains.values())
    snap = synthetic.snapshot(chains)
    best = float("inf")
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter()
        rm = rebuild(snap)
        best = min(best, time.perf_counter() - t0)
        assert rm.count("ledger_events") == total
        rm.close()
    out: dict[str, float] = {"projection_rows_per_s": round(total / best, 1)}

    n_lag, rate = (600, 100.0) if quick else (3000, 200.0)
    with EmbeddedBroker() as broker:
        lag = asyncio.run(_lag(broker.bootstrap, n_lag, rate, "asyncio"))
        out["projection_lag_p50_ms"] = round(lag["p50"], 2)
        out["projection_lag_p99_ms"] = round(lag["p99"], 2)
        out["projection_lag_max_ms"] = round(lag["max"], 2)
        out["projection_lag_rate_eps"] = rate
        if not quick:
            flag = asyncio.run(_lag(broker.bootstrap, n_lag, rate, "faust"))
            out["projection_lag_faust_p50_ms"] = round(flag["p50"], 2)
            out["projection_lag_faust_p99_ms"] = round(flag["p99"], 2)
        out["projection_replay_broker_rows_per_s"] = round(
            asyncio.run(_broker_replay(broker.bootstrap, chains)), 1
        )
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
