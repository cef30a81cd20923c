"""Ledger benchmarks: chained appends on the embedded broker, verification of an export."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
import uuid
from pathlib import Path


async def _append(bootstrap: str, n: int) -> tuple[float, str]:
    from tensafe.events.ledger import LedgerWriter
    from tensafe.events.topics import ensure_topics, topic_names

    prefix = f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(bootstrap, partitions=1, topic_prefix=prefix)
    names = topic_names(prefix)
    w = LedgerWriter(bootstrap, 0, topic=names.ledger, checkpoint_topic=names.checkpoints)
    await w.start()
    payload = {"command_type": "tensafe.command.OptimStep", "error_code": "none", "message": "x" * 200}
    batch = 500
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        await w.append_many(
            [("CommandFailed", payload, "tenant", "client", f"c{i}") for i in range(start, start + batch)]
        )
    elapsed = time.perf_counter() - t0
    await w.stop()
    return n / elapsed, prefix


def run(quick: bool) -> dict[str, float]:
    from tensafe.events.audit import verify_snapshot
    from tensafe.events.broker import EmbeddedBroker
    from tensafe.events.export import collect, read_export, write_export

    n = 20_000 if quick else 50_000
    with EmbeddedBroker() as broker:
        eps, prefix = asyncio.run(_append(broker.bootstrap, n))
        snap = asyncio.run(collect(broker.bootstrap, prefix))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.avro"
        write_export(path, snap)
        offline = read_export(path)
    values = [raw for recs in offline.ledger.values() for _, raw in recs]
    best_verify = best_sha = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        report = verify_snapshot(offline)
        best_verify = min(best_verify, time.perf_counter() - t0)
        assert report.ok and report.total_accepted == n + 1
        t0 = time.perf_counter()
        prev = b"\x00" * 32
        for v in values:
            prev = hashlib.sha256(prev + v).digest()
        best_sha = min(best_sha, time.perf_counter() - t0)
    return {
        "ledger_append_eps": round(eps, 1),
        "verify_eps": round(len(values) / best_verify, 1),
        "verify_vs_sha256_ratio": round(best_verify / best_sha, 3),
        "ledger_record_bytes_mean": round(sum(map(len, values)) / len(values), 1),
    }


if __name__ == "__main__":
    print(run(quick=True))
