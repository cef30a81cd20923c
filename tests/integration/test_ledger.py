"""The ledger on a real broker: append, verify, tamper, fence, crash, restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
from tensafe.events import kafka_io
from tensafe.events.audit import check_proof, prove_event, verify_snapshot
from tensafe.events.chain import ChainState
from tensafe.events.envelope import make_envelope
from tensafe.events.export import LedgerSnapshot, collect, read_export, write_export
from tensafe.events.ledger import LedgerFollower, LedgerWriter
from tensafe.events.topics import CHECKPOINTS, LEDGER, ensure_topics

pytestmark = pytest.mark.integration
PARTITIONS = 4


def _payload(i: int) -> dict:
    return {"command_type": "tensafe.command.OptimStep", "error_code": "none", "message": f"event {i}"}


async def _fresh(bootstrap: str, partitions: int = PARTITIONS) -> str:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    await ensure_topics(bootstrap, partitions=partitions, topic_prefix=prefix)
    return prefix


def _writer(bootstrap: str, prefix: str, partition: int, **kw) -> LedgerWriter:
    return LedgerWriter(
        bootstrap, partition, topic=prefix + LEDGER, checkpoint_topic=prefix + CHECKPOINTS, **kw
    )


async def _produce_raw(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    producer = kafka_io.make_producer(bootstrap)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, partition=partition)
    finally:
        await producer.stop()


@pytest.fixture
def signer():
    from tensafe.crypto.signing import HybridSigningKey

    return HybridSigningKey.generate()


async def test_ten_thousand_events_verify_live_and_from_export(broker, signer, tmp_path):
    prefix = await _fresh(broker.bootstrap)
    writers = [_writer(broker.bootstrap, prefix, p, signer=signer) for p in range(PARTITIONS)]
    for w in writers:
        await w.start()
    try:
        batch = 250
        for start in range(0, 10_000, batch):
            w = writers[(start // batch) % PARTITIONS]
            await w.append_many(
                [
                    ("CommandFailed", _payload(i), "t1", f"c{i % 7}", f"cmd-{i}")
                    for i in range(start, start + batch)
                ]
            )
        for w in writers:
            await w.checkpoint()
    finally:
        for w in writers:
            await w.stop()
    snap = await collect(broker.bootstrap, prefix)
    report = verify_snapshot(snap, {signer.key_id: signer.public_key()})
    assert report.ok, report.errors
    # 10,000 events + one claim and one CheckpointSigned per partition
    assert report.total_accepted == 10_000 + 2 * PARTITIONS
    assert all(r.checkpoints_verified == 1 for r in report.partitions.values())
    out = tmp_path / "ledger.avro"
    write_export(out, snap)
    offline = verify_snapshot(read_export(out), {signer.key_id: signer.public_key()})
    assert offline.ok and offline.total_accepted == report.total_accepted
    # an inclusion proof of one event checks against the signed checkpoint alone
    event_id = snap_event_id(snap, partition=2, index=100)
    proof = prove_event(snap, event_id, prefix)
    check_proof(proof, signer.public_key())


def snap_event_id(snap: LedgerSnapshot, partition: int, index: int) -> str:
    from tensafe.events.envelope import decode_envelope

    return decode_envelope(snap.ledger[partition][index][1]).event_id


async def _chain_with_checkpoint(bootstrap: str, signer, n: int = 60) -> tuple[str, LedgerSnapshot]:
    prefix = await _fresh(bootstrap, partitions=1)
    w = _writer(bootstrap, prefix, 0, signer=signer)
    await w.start()
    await w.append_many([("CommandFailed", _payload(i), "t1", "c1", f"cmd-{i}") for i in range(n)])
    await w.checkpoint()
    await w.append_many([("CommandFailed", _payload(i), "t1", "c1", f"cmd-{i}") for i in range(n, n + 5)])
    await w.stop()
    return prefix, await collect(bootstrap, prefix)


def _tamper(kind: str, values: list[bytes]) -> tuple[list[bytes], int]:
    """Apply one tamper kind to a partition's values; returns (values, expected bad offset)."""
    v = list(values)
    if kind == "modified":
        raw = bytearray(v[20])
        raw[-2] ^= 0x40
        v[20] = bytes(raw)
        return v, 20
    if kind == "missing":
        del v[20]
        return v, 20
    if kind == "reordered":
        v[20], v[21] = v[21], v[20]
        return v, 20
    if kind == "inserted":
        state = ChainState(0)
        for raw in v[:20]:
            state.feed(raw)
        forged = make_envelope(
            prev_hash=b"\x11" * 32,
            partition=0,
            seq=state.next_seq,
            epoch=state.epoch,
            event_type="CommandFailed",
            payload=_payload(999),
            tenant_id="t1",
            client_id="c1",
            command_id="forged",
        )
        v.insert(20, forged.encode())
        return v, 20
    if kind == "forked":
        state = ChainState(0)
        for raw in v[:20]:
            state.feed(raw)
        sibling = make_envelope(
            prev_hash=state.hash_at(18),
            partition=0,
            seq=19,
            epoch=state.epoch,
            event_type="CommandFailed",
            payload=_payload(998),
            tenant_id="t1",
            client_id="c1",
            command_id="fork",
        )
        v.insert(25, sibling.encode())
        return v, 25
    if kind == "stale_epoch":
        state = ChainState(0)
        for raw in v[:30]:
            state.feed(raw)
        zombie = make_envelope(
            prev_hash=state.tail_hash,
            partition=0,
            seq=state.next_seq,
            epoch=0,
            event_type="CommandFailed",
            payload=_payload(997),
            tenant_id="t1",
            client_id="c1",
            command_id="zombie",
        )
        v.insert(30, zombie.encode())
        return v, 30
    if kind == "truncated":
        return v[:40], -1
    raise AssertionError(kind)


KINDS = ["modified", "missing", "reordered", "inserted", "forked", "stale_epoch", "truncated"]


@pytest.mark.parametrize("kind", KINDS)
async def test_tampering_is_detected_in_exports_and_live_topics(broker, signer, tmp_path, kind):
    prefix, snap = await _chain_with_checkpoint(broker.bootstrap, signer)
    keys = {signer.key_id: signer.public_key()}
    assert verify_snapshot(snap, keys).ok
    values = [raw for _, raw in snap.ledger[0]]
    tampered, bad_index = _tamper(kind, values)

    # 1) an exported file, tampered
    export_snap = LedgerSnapshot()
    for i, raw in enumerate(tampered):
        export_snap.add("ledger", prefix + LEDGER, 0, i, 0, None, raw)
    for cp in snap.checkpoints:
        export_snap.add("checkpoints", prefix + CHECKPOINTS, 0, 0, 0, None, cp.encode())
    path = tmp_path / "tampered.avro"
    write_export(path, export_snap)
    # 2) a live topic holding the tampered records
    live_prefix = await _fresh(broker.bootstrap, partitions=1)
    await _produce_raw(broker.bootstrap, live_prefix + LEDGER, 0, tampered)
    await _produce_raw(
        broker.bootstrap, live_prefix + CHECKPOINTS, 0, [cp.encode() for cp in snap.checkpoints]
    )
    live = await collect(broker.bootstrap, live_prefix)

    for source in (read_export(path), live):
        report = verify_snapshot(source, keys)
        assert not report.ok
        first = report.errors[0]
        assert first.kind == kind, str(first)
        if bad_index >= 0:
            assert first.offset == bad_index, str(first)


async def test_zombie_writer_is_fenced(broker):
    prefix = await _fresh(broker.bootstrap, partitions=1)
    old = _writer(broker.bootstrap, prefix, 0)
    await old.start()
    await old.append("CommandFailed", _payload(1), tenant_id="t", client_id="c", command_id="a")
    new = _writer(broker.bootstrap, prefix, 0)
    await new.start()  # claims epoch 2
    assert new.epoch == old.epoch + 1
    await old.append(
        "CommandFailed", _payload(2), tenant_id="t", client_id="c", command_id="zombie"
    )  # lands, but fenced
    await new.append("CommandFailed", _payload(3), tenant_id="t", client_id="c", command_id="b")
    await old.stop()
    await new.stop()
    follower = LedgerFollower(broker.bootstrap, 0, topic=prefix + LEDGER)
    accepted = [e.envelope.command_id async for e in follower.read_to_end()]
    assert accepted == [None, "a", None, "b"]
    assert follower.rejected == {"stale_epoch": 1}
    report = verify_snapshot(await collect(broker.bootstrap, prefix))
    assert [f.kind for f in report.errors] == ["stale_epoch"]
    assert verify_snapshot(await collect(broker.bootstrap, prefix), allow_fenced=True).ok


WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from tensafe.events.ledger import LedgerWriter
    bootstrap, prefix, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async def main():
        w = LedgerWriter(bootstrap, 0, topic=prefix + "tensafe.ledger", checkpoint_topic=prefix + "tensafe.checkpoints")
        await w.start()
        for i in range(total):
            # idempotent: commands already done in an earlier life are no-ops
            await w.append("CommandFailed", {"command_type": "x", "error_code": "e", "message": str(i)},
                           tenant_id="t", client_id="c", command_id=f"cmd-{i}")
            print(i, flush=True)
        await w.stop()
    asyncio.run(main())
    """
)


async def test_writer_killed_with_sigkill_resumes_without_gap_or_duplicate(broker, tmp_path):
    prefix = await _fresh(broker.bootstrap, partitions=1)
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    total = 400
    proc = subprocess.Popen(
        [sys.executable, str(script), broker.bootstrap, prefix, str(total)], stdout=subprocess.PIPE, text=True
    )
    for _ in range(150):  # let it get well into the run, then kill it mid-flight
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(
        [sys.executable, str(script), broker.bootstrap, prefix, str(total)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    snap = await collect(broker.bootstrap, prefix)
    report = verify_snapshot(snap)
    assert report.ok, report.errors
    follower = LedgerFollower(broker.bootstrap, 0, topic=prefix + LEDGER)
    cmds = [e.envelope.command_id async for e in follower.read_to_end() if e.envelope.command_id]
    assert cmds == [f"cmd-{i}" for i in range(total)]  # every command exactly once, in order
    assert report.partitions[0].epoch == 2


@pytest.mark.slow
async def test_durable_node_restart_keeps_every_event(tmp_path, signer):
    from tensafe.events.broker import EmbeddedBroker

    data = tmp_path / "node"
    node = EmbeddedBroker("durable", data)
    await node.start_async() if hasattr(node, "start_async") else await asyncio.to_thread(node.start)
    try:
        await ensure_topics(node.bootstrap, partitions=2)
        w = LedgerWriter(node.bootstrap, 1, signer=signer)
        await w.start()
        await w.append_many([("CommandFailed", _payload(i), "t", "c", f"cmd-{i}") for i in range(300)])
        await w.checkpoint()
        await w.stop()
        before = await collect(node.bootstrap)
    finally:
        await asyncio.to_thread(node.stop)
    node = EmbeddedBroker("durable", data)
    await asyncio.to_thread(node.start)
    try:
        after = await collect(node.bootstrap)
        assert after.ledger == before.ledger  # every record, byte for byte
        w = LedgerWriter(node.bootstrap, 1, signer=signer)
        await w.start()
        await w.append("CommandFailed", _payload(300), tenant_id="t", client_id="c", command_id="cmd-300")
        dup = await w.append("CommandFailed", _payload(0), tenant_id="t", client_id="c", command_id="cmd-0")
        assert dup.duplicate
        await w.stop()
        report = verify_snapshot(await collect(node.bootstrap), {signer.key_id: signer.public_key()})
        assert report.ok and report.partitions[1].accepted == 1 + 300 + 1 + 1 + 1
    finally:
        await asyncio.to_thread(node.stop)


async def test_batched_appends_report_their_true_offsets(broker):
    prefix = await _fresh(broker.bootstrap, partitions=1)
    w = _writer(broker.bootstrap, prefix, 0)
    await w.start()
    big = {"command_type": "x", "error_code": "e", "message": "y" * 3000}  # several producer batches
    results = await w.append_many([("CommandFailed", big, "t", "c", f"cmd-{i}") for i in range(200)])
    await w.stop()
    snap = await collect(broker.bootstrap, prefix)
    offsets = {seq: off for seq, (off, _) in enumerate(snap.ledger[0])}
    assert [r.offset for r in results] == [offsets[r.seq] for r in results]
    assert [r.seq for r in results] == list(range(1, 201))
