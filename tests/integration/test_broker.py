"""The embedded broker, topic creation and kafka_io helpers against a real Tansu."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from tensafe.events import kafka_io
from tensafe.events.broker import (
    BrokerError,
    EmbeddedBroker,
    ExternalKafka,
    KafkaNode,
    probe_kafka,
)
from tensafe.events.topics import (
    TOPICS,
    TopicError,
    TopicPartitionMismatch,
    create_topics,
    ensure_topics,
    partition_counts,
    topic_names,
)

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _value(i: int) -> bytes:
    # Varied lengths and arbitrary bytes, so "byte for byte" means something.
    rng = random.Random(i)
    return rng.randbytes(rng.randint(0, 300)) + i.to_bytes(4, "big")


async def _produce_keyed(
    bootstrap: str, topic: str, n: int, *, linger_ms: int = 20
) -> dict[int, list[tuple[int, bytes, bytes]]]:
    """Pipelined keyed sends (many records per batch); returns partition → [(offset, key, value)]."""
    producer = kafka_io.make_producer(bootstrap, linger_ms=linger_ms)
    await producer.start()
    try:
        futs = []
        for i in range(n):
            key, value = f"key-{i % 97}".encode(), _value(i)
            futs.append((key, value, await producer.send(topic, value, key=key)))
        out: dict[int, list[tuple[int, bytes, bytes]]] = {}
        for key, value, fut in futs:
            md = await fut
            out.setdefault(md.partition, []).append((md.offset, key, value))
    finally:
        await producer.stop()
    for recs in out.values():
        recs.sort()
    return out


async def _read_all(bootstrap: str, topic: str, partition: int, **kw) -> list[tuple[int, bytes, bytes]]:
    return [
        (r.offset, r.key, r.value) async for r in kafka_io.read_partition(bootstrap, topic, partition, **kw)
    ]


# --------------------------------------------------------------------------- lifecycle


def test_memory_broker_starts_answers_and_stops_without_leaking() -> None:
    b = EmbeddedBroker("memory").start()
    pid, port, log_dir = b.pid, b.port, b.log_dir
    assert pid is not None and port is not None and log_dir is not None
    try:
        assert b.is_running and _alive(pid)
        assert b.bootstrap == f"127.0.0.1:{port}"
        assert [(h, p) for _, h, p in probe_kafka("127.0.0.1", port)] == [("127.0.0.1", port)]
        assert "ready in" in (log_dir / "tansu.log").read_text()
    finally:
        b.stop()
    assert not _alive(pid), "tansu still running after stop()"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert not log_dir.exists()  # memory mode: temp logs go with the broker
    assert b.pid is None and not b.is_running
    with pytest.raises(BrokerError):
        _ = b.bootstrap
    b.stop()  # idempotent


async def test_async_context_manager_and_restart_of_same_object() -> None:
    async with EmbeddedBroker() as b:
        first_pid = b.pid
        await create_topics(b.bootstrap, ["x"], partitions=2)
        assert await partition_counts(b.bootstrap, ["x"]) == {"x": 2}
    assert first_pid is not None and _wait_dead(first_pid, 1)
    async with b:  # memory: a restart is a new, empty broker
        assert b.pid != first_pid
        with pytest.raises(TopicError):
            await partition_counts(b.bootstrap, ["x"])


async def test_two_memory_brokers_side_by_side() -> None:
    async with EmbeddedBroker() as a, EmbeddedBroker() as b:
        assert a.port != b.port
        await create_topics(a.bootstrap, ["only-on-a"], partitions=1)
        await create_topics(b.bootstrap, ["only-on-b"], partitions=3)
        for node, topic in ((a, "only-on-a"), (b, "only-on-b")):
            p = kafka_io.make_producer(node.bootstrap)
            await p.start()
            await p.send_and_wait(topic, b"hello", partition=0)
            await p.stop()
            assert await kafka_io.high_watermark(node.bootstrap, topic, 0) == 1
        with pytest.raises(TopicError):
            await partition_counts(a.bootstrap, ["only-on-b"])


def test_hard_killed_parent_does_not_leak_the_broker(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: even SIGKILL of the Python process takes Tansu down."""
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from tensafe.events.broker import EmbeddedBroker
            b = EmbeddedBroker().start()
            print(b.pid, b.log_dir, flush=True)
            time.sleep(60)
            """
        )
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pid_text, log_dir = owner.stdout.readline().split(maxsplit=1)
        tansu_pid = int(pid_text)
        assert _alive(tansu_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert _wait_dead(tansu_pid, 10), "orphaned tansu kept running after its owner was SIGKILLed"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        with contextlib.suppress(NameError):
            shutil.rmtree(log_dir.strip(), ignore_errors=True)  # nobody was left to clean it


def test_external_kafka_is_a_no_op_handle(broker: KafkaNode) -> None:
    ext = ExternalKafka(broker.bootstrap)
    with ext as e:
        assert e.bootstrap == broker.bootstrap
    assert isinstance(ext, KafkaNode)
    host, port = broker.bootstrap.split(",")[0].rsplit(":", 1)
    assert probe_kafka(host, int(port))


# --------------------------------------------------------------------------- topics


async def test_topics_have_their_partition_counts_and_mismatch_raises(broker: KafkaNode) -> None:
    prefix = f"tp{random.getrandbits(40):x}."
    names = await ensure_topics(broker.bootstrap, partitions=3, topic_prefix=prefix)
    assert names == topic_names(prefix)
    assert names.all() == tuple(prefix + t for t in TOPICS)
    assert await partition_counts(broker.bootstrap, names.all()) == dict.fromkeys(names.all(), 3)
    # idempotent
    assert await ensure_topics(broker.bootstrap, partitions=3, topic_prefix=prefix) == names
    with pytest.raises(TopicPartitionMismatch) as err:
        await ensure_topics(broker.bootstrap, partitions=5, topic_prefix=prefix)
    assert err.value.mismatches == dict.fromkeys(names.all(), (3, 5))
    # the session fixture created the unprefixed defaults
    assert await partition_counts(broker.bootstrap, TOPICS) == dict.fromkeys(TOPICS, 4)


async def test_looking_at_a_missing_topic_does_not_create_it(broker: KafkaNode) -> None:
    name = f"missing{random.getrandbits(40):x}"
    for _ in range(2):
        with pytest.raises(TopicError):
            await partition_counts(broker.bootstrap, [name])
    # Creating it now with 2 partitions works: nothing auto-created it with 4.
    assert await create_topics(broker.bootstrap, {name: 2}) == {name: 2}


def test_invalid_prefix_is_rejected() -> None:
    with pytest.raises(ValueError):
        topic_names("bad prefix/")


# --------------------------------------------------------------------------- kafka_io


async def test_5000_keyed_records_read_back_exactly_in_order(broker: KafkaNode, fresh_topics) -> None:
    names = await fresh_topics(partitions=4)
    produced = await _produce_keyed(broker.bootstrap, names.commands, 5000)
    assert sum(len(v) for v in produced.values()) == 5000
    assert sorted(produced) == [0, 1, 2, 3]
    hws = await kafka_io.high_watermarks(broker.bootstrap, names.commands, range(4))
    for p, expected in produced.items():
        assert [o for o, _, _ in expected] == list(range(len(expected)))  # dense offsets from 0
        assert hws[p] == len(expected)
        assert await kafka_io.high_watermark(broker.bootstrap, names.commands, p) == len(expected)
        got = await _read_all(broker.bootstrap, names.commands, p)
        assert got == expected
        # same key always lands on the same partition
        assert {k for _, k, _ in got}.isdisjoint({k for q, v in produced.items() if q != p for _, k, _ in v})
    if isinstance(broker, EmbeddedBroker):
        # Prove the test exercised multi-record batches: there, ListOffsets is wrong
        # on Tansu (base offset of the last batch + 1) and our helpers are not.
        c = kafka_io.make_consumer(broker.bootstrap)
        await c.start()
        try:
            tps = [TopicPartition(names.commands, p) for p in range(4)]
            eo = await c.end_offsets(tps)
        finally:
            await c.stop()
        assert any(eo[tp] < hws[tp.partition] for tp in tps), (eo, hws)


async def test_read_partition_ranges(broker: KafkaNode, fresh_topics) -> None:
    names = await fresh_topics(partitions=1)
    topic, bs = names.ledger, broker.bootstrap
    assert await _read_all(bs, topic, 0) == []
    assert await kafka_io.high_watermark(bs, topic, 0) == 0
    producer = kafka_io.make_producer(bs, linger_ms=30)
    await producer.start()
    try:
        futs = [await producer.send(topic, b"v%d" % i, key=b"k", partition=0) for i in range(300)]
        await asyncio.gather(*futs)
        assert await kafka_io.high_watermark(bs, topic, 0) == 300
        mid = await _read_all(bs, topic, 0, start_offset=123, until_offset=130)
        assert [(o, v) for o, _, v in mid] == [(o, b"v%d" % o) for o in range(123, 130)]
        assert [o for o, _, _ in await _read_all(bs, topic, 0, start_offset=299)] == [299]
        assert await _read_all(bs, topic, 0, start_offset=300) == []
        assert await _read_all(bs, topic, 0, start_offset=5000) == []

        # until_offset beyond the end waits for the records to be written
        async def later() -> None:
            await asyncio.sleep(0.3)
            for i in range(300, 310):
                await producer.send_and_wait(topic, b"v%d" % i, partition=0)

        task = asyncio.create_task(later())
        tail = await _read_all(bs, topic, 0, start_offset=295, until_offset=310, timeout=10)
        await task
        assert [o for o, _, _ in tail] == list(range(295, 310))
        # a snapshot: records appended during the read are not included
        seen = []
        async with contextlib.aclosing(kafka_io.read_partition(bs, topic, 0)) as it:
            async for rec in it:
                if rec.offset == 0:
                    await producer.send_and_wait(topic, b"late", partition=0)
                seen.append(rec.offset)
        assert seen == list(range(310))
        with pytest.raises(TimeoutError):
            await _read_all(bs, topic, 0, start_offset=300, until_offset=400, timeout=0.5)
    finally:
        await producer.stop()


async def test_follow_partition_yields_old_then_new_records_and_stops(
    broker: KafkaNode, fresh_topics
) -> None:
    names = await fresh_topics(partitions=1)
    topic, bs = names.ledger, broker.bootstrap
    producer = kafka_io.make_producer(bs)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, b"old%d" % i, partition=0)
        stop = asyncio.Event()
        got: list[bytes] = []
        new_only: list[bytes] = []

        async def follow(into: list[bytes], start) -> None:
            async for rec in kafka_io.follow_partition(bs, topic, 0, start_offset=start, stop=stop):
                into.append(rec.value)

        t_all = asyncio.create_task(follow(got, 0))
        t_new = asyncio.create_task(follow(new_only, "end"))
        await asyncio.sleep(0.5)  # both followers are positioned
        t0 = time.perf_counter()
        for i in range(5):
            await producer.send_and_wait(topic, b"new%d" % i, partition=0)
        while len(got) < 10 or len(new_only) < 5:
            assert time.perf_counter() - t0 < 10, (got, new_only)
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.gather(t_all, t_new), 5)
        assert got == [b"old%d" % i for i in range(5)] + [b"new%d" % i for i in range(5)]
        assert new_only == [b"new%d" % i for i in range(5)]
    finally:
        await producer.stop()


def test_consumer_refuses_zero_fetch_wait(broker: KafkaNode) -> None:
    # Tansu never answers a fetch with max wait 0: the consumer would hang silently.
    with pytest.raises(ValueError):
        kafka_io.make_consumer(broker.bootstrap, fetch_max_wait_ms=0)


# --------------------------------------------------------------------------- durable


@pytest.mark.slow
async def test_durable_restart_keeps_records_offsets_and_ports(
    durable_node: Callable[..., EmbeddedBroker],
) -> None:
    node = durable_node("n1")
    data = node.data_dir
    assert data is not None
    bootstrap, ports = node.bootstrap, dict(node.ports)
    pids = node.pids
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    state = json.loads((data / "node.json").read_text())
    assert state["ports"] == ports and state["bootstrap"] == bootstrap
    assert (data / "seaweedfs").is_dir() and (data / "logs" / "tansu.log").exists()

    names = await ensure_topics(bootstrap, partitions=4)
    produced = await _produce_keyed(bootstrap, names.ledger, 2000)
    group = "durable-group"
    committed = {
        TopicPartition(names.ledger, p): OffsetAndMetadata(len(v) // 2, "half") for p, v in produced.items()
    }
    c = kafka_io.make_consumer(bootstrap, group)
    await c.start()
    try:
        c.assign(list(committed))
        await c.commit(committed)
    finally:
        await c.stop()

    await node.astop()  # Tansu AND SeaweedFS
    assert all(_wait_dead(p, 1) for p in pids), "a server outlived stop()"
    assert not (data / "pids.json").exists()
    assert not [s for port in ports.values() for s in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]

    node2 = durable_node("n1")  # same data dir: a restart
    assert node2.bootstrap == bootstrap and node2.ports == ports  # clients keep their address
    assert set(node2.pids).isdisjoint(pids)
    assert await partition_counts(bootstrap, names.all()) == dict.fromkeys(names.all(), 4)
    for p, expected in produced.items():
        assert await kafka_io.high_watermark(bootstrap, names.ledger, p) == len(expected)
        assert await _read_all(bootstrap, names.ledger, p) == expected  # byte for byte
    c = kafka_io.make_consumer(bootstrap, group)
    await c.start()
    try:
        for tp, om in committed.items():
            assert await c.committed(tp) == om.offset
    finally:
        await c.stop()
    # appends continue at the right offsets
    more = await _produce_keyed(bootstrap, names.ledger, 200)
    for p, recs in more.items():
        n0 = len(produced.get(p, []))
        assert [o for o, _, _ in recs] == list(range(n0, n0 + len(recs)))
        assert await _read_all(bootstrap, names.ledger, p, start_offset=n0) == recs


@pytest.mark.slow
def test_durable_data_dir_is_exclusive_and_two_nodes_coexist(
    durable_node: Callable[..., EmbeddedBroker],
) -> None:
    a = durable_node("a")
    with pytest.raises(BrokerError, match="in use"):
        durable_node("a")
    b = durable_node("b")
    assert set(a.ports.values()).isdisjoint(b.ports.values())
    with EmbeddedBroker() as m:  # a memory broker next to both
        assert m.port not in set(a.ports.values()) | set(b.ports.values())
    assert a.is_running and b.is_running
