"""Live projectors on a real broker: catch up, equal a replay, survive kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensafe.events.ledger import LedgerWriter
from tensafe.events.topics import topic_names
from tensafe.projections import synthetic
from tensafe.projections.projector import run_faust_projector, run_projector
from tensafe.projections.readmodel import ReadModel
from tensafe.projections.replay import arebuild

pytestmark = pytest.mark.integration
PARTITIONS = 4
REPO = Path(__file__).resolve().parents[3]


async def write_events(
    bootstrap: str, prefix: str, per_partition: dict[int, list], chunk: int = 100
) -> dict[int, int]:
    """Append each partition's events with a real LedgerWriter; returns {partition: next_seq}."""
    names = topic_names(prefix)
    writers = {p: LedgerWriter(bootstrap, p, topic=names.ledger, checkpoint_topic=names.checkpoints)
               for p in per_partition}  # fmt: skip
    await asyncio.gather(*(w.start() for w in writers.values()))

    async def fill(p: int) -> None:
        events = per_partition[p]
        for i in range(0, len(events), chunk):
            await writers[p].append_many(events[i : i + chunk])

    try:
        await asyncio.gather(*(fill(p) for p in per_partition))
        return {p: w.next_seq for p, w in writers.items()}
    finally:
        await asyncio.gather(*(w.stop() for w in writers.values()))


async def wait_caught_up(rm: ReadModel, expected: dict[int, int], timeout: float = 60.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        have = {p: pos.next_seq for p, pos in rm.positions().items()}
        if all(have.get(p, 0) >= n for p, n in expected.items()):
            return loop.time() - start
        if loop.time() - start > timeout:
            raise TimeoutError(f"projection at {have}, log at {expected}")
        await asyncio.sleep(0.05)


def no_duplicates(rm: ReadModel) -> None:
    dup = rm.sql("SELECT partition, seq, count(*) FROM ledger_events GROUP BY ALL HAVING count(*) > 1")[1]
    assert dup == []
    dup = rm.sql("SELECT event_id FROM steps GROUP BY event_id HAVING count(*) > 1")[1]
    assert dup == []


@pytest.mark.parametrize("engine", ["asyncio", "faust"])
async def test_live_projector_catches_up_and_equals_a_replay(broker, topic_prefix, engine):
    names = topic_names(topic_prefix)
    workload = synthetic.workload(2000, PARTITIONS)
    assert sum(len(v) for v in workload.values()) >= 1950
    rm = ReadModel()
    stop = asyncio.Event()
    runner = run_projector if engine == "asyncio" else run_faust_projector
    task = asyncio.create_task(runner(broker.bootstrap, rm, stop, topic=names.ledger))
    try:
        # the projector follows while the writers write (live, not a backlog)
        expected = await write_events(broker.bootstrap, topic_prefix, workload)
        await wait_caught_up(rm, expected, timeout=90)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    total = sum(expected.values())
    assert total == sum(len(v) for v in workload.values()) + PARTITIONS  # + one WriterClaimed each
    assert rm.count("ledger_events") == total
    no_duplicates(rm)
    assert rm.sql("SELECT count(DISTINCT client_id) FROM training_clients")[1] == [(8,)]

    rebuilt = await arebuild(broker.bootstrap, topic_prefix=topic_prefix)
    live, replayed = rm.dump(), rebuilt.dump()
    assert live.keys() == replayed.keys()
    for table in live:  # every table, fully ordered, row for row
        assert live[table] == replayed[table], table


async def test_projector_killed_and_restarted_resumes_without_duplicates(broker, topic_prefix, tmp_path):
    names = topic_names(topic_prefix)
    expected = await write_events(broker.bootstrap, topic_prefix, synthetic.workload(2000, PARTITIONS))
    db = tmp_path / "readmodel.duckdb"
    cmd = [sys.executable, "-m", "tensafe.projections.projector", "--bootstrap", broker.bootstrap,
           "--topic-prefix", topic_prefix, "--db", str(db), "--engine", "asyncio", "--max-batch", "40", "--progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 400:  # let it apply a few batches, then kill it mid-stream
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, proc.stderr.read()
            seen = sum(json.loads(line).values())
            assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: a crash
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen < sum(expected.values())

    rm = ReadModel(db)  # the restart: the same file, positions from projection_state
    resumed = {p: pos.next_seq for p, pos in rm.positions().items()}
    assert sum(resumed.values()) >= seen  # every batch it reported is committed
    assert sum(resumed.values()) < sum(expected.values())
    stop = asyncio.Event()
    task = asyncio.create_task(run_faust_projector(broker.bootstrap, rm, stop, topic=names.ledger))
    try:
        await wait_caught_up(rm, expected, timeout=90)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert rm.count("ledger_events") == sum(expected.values())
    no_duplicates(rm)
    # Faust started where the database was (its group was seeded from projection_state):
    # nothing before the resume point was even delivered again.
    assert rm.totals.skipped == 0 and rm.totals.rejected == {}
    assert rm.totals.applied == sum(expected.values()) - sum(resumed.values())
    rebuilt = await arebuild(broker.bootstrap, topic_prefix=topic_prefix)
    assert rm.dump() == rebuilt.dump()
    rm.close()


async def test_projector_stops_at_a_broken_chain(broker, topic_prefix):
    from tensafe.events import kafka_io
    from tensafe.projections.readmodel import ChainBroken

    names = topic_names(topic_prefix)
    expected = await write_events(broker.bootstrap, topic_prefix, {0: synthetic.tenant_events("A")})
    # a forged record that names a position but does not link
    forged = synthetic.chain_records(0, synthetic.tenant_events("B"))[2]
    producer = kafka_io.make_producer(broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(names.ledger, forged, partition=0)
    finally:
        await producer.stop()
    rm = ReadModel()
    with pytest.raises(ChainBroken) as info:
        await asyncio.wait_for(
            run_projector(broker.bootstrap, rm, asyncio.Event(), topic=names.ledger, partitions=[0]), 30
        )
    assert info.value.partition == 0 and info.value.offset == expected[0]
    assert rm.positions()[0].next_seq == expected[0]
