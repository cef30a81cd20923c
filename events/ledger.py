"""Ledger writer (single writer per partition) and follower (every reader).

The writer is the only process that assigns ``seq``, ``prev_hash`` and ``epoch`` for
its partition. On start it reads the partition to the end, then appends a
WriterClaimed with an epoch higher than any it saw (the fence) and reads again to
make sure its claim is the one readers accept. Appends are pipelined (seq assigned
and the record queued under a lock, the ack awaited outside it), acks=all.

Exactly-once effect without broker transactions: each outcome event carries the
command id; (command id, event type) is done at most once. Re-appending a done
outcome returns the recorded one and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tensafe.events import kafka_io
from tensafe.events.chain import CLAIM_TYPE, ChainState, Verdict
from tensafe.events.envelope import EVENT_NS, Envelope, decode_envelope, make_envelope
from tensafe.events.topics import CHECKPOINTS, LEDGER

log = logging.getLogger(__name__)


class LedgerError(Exception):
    code = "ledger_error"


class WriterFenced(LedgerError):
    """Another writer holds this partition (our claim lost or a newer claim exists)."""

    code = "writer_fenced"


class WriterBroken(LedgerError):
    """A send failed: the log's tail is unknown until the writer recovers."""

    code = "writer_broken"


@dataclass(frozen=True)
class Appended:
    partition: int
    seq: int
    hash: bytes
    event_id: str
    event_type: str
    command_id: str | None
    offset: int | None  # None when returned from the done-index of a previous run
    duplicate: bool = False


@dataclass
class LedgerEntry:
    """An accepted ledger record as seen by a reader."""

    partition: int
    offset: int
    seq: int
    epoch: int
    hash: bytes
    raw: bytes
    timestamp_ms: int
    _envelope: Envelope | None = field(default=None, repr=False)

    @property
    def envelope(self) -> Envelope:
        if self._envelope is None:
            self._envelope = decode_envelope(self.raw)
        return self._envelope


def _full(event_type: str) -> str:
    return event_type if "." in event_type else EVENT_NS + event_type


class LedgerWriter:
    def __init__(
        self,
        bootstrap: str,
        partition: int,
        *,
        topic: str = LEDGER,
        checkpoint_topic: str = CHECKPOINTS,
        writer_id: str | None = None,
        signer=None,  # tensafe.crypto.signing.HybridSigningKey: signs Merkle checkpoints
        checkpoint_every: int = 0,  # events between automatic checkpoints; 0 = only on demand
        ledger_id: str = "default",
        on_replay: Callable[[LedgerEntry], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.partition = partition
        self.topic = topic
        self.checkpoint_topic = checkpoint_topic
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.ledger_id = ledger_id
        self.on_replay = on_replay
        self.state = ChainState(partition)
        self.epoch = 0
        self.done: dict[tuple[str, str], Appended] = {}
        self._max_epoch_seen = 0
        self._next_offset = 0  # next log offset to read when catching up
        self._producer = None
        self._lock = asyncio.Lock()
        self._broken: BaseException | None = None
        self._tree = None
        self._since_checkpoint = 0
        self.checkpointed_size = 0  # tree size of the last checkpoint this writer signed
        self._checkpoint_task: asyncio.Task | None = None

    # -- life cycle -------------------------------------------------------------
    async def start(self) -> None:
        from tensafe.events.merkle import MerkleTree

        self._tree = MerkleTree()
        self._producer = kafka_io.make_producer(self.bootstrap)
        await self._producer.start()
        await self._catch_up(replay=True)
        await self._claim()

    async def stop(self) -> None:
        if self._checkpoint_task is not None:
            await asyncio.gather(self._checkpoint_task, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> LedgerWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def next_seq(self) -> int:
        return self.state.next_seq

    @property
    def tree(self):
        return self._tree

    # -- reading our own partition --------------------------------------------
    async def _catch_up(self, replay: bool) -> None:
        async for rec in kafka_io.read_partition(
            self.bootstrap, self.topic, self.partition, start_offset=self._next_offset
        ):
            self._next_offset = rec.offset + 1
            out = self.state.feed(rec.value)
            if out.header is not None:
                self._max_epoch_seen = max(self._max_epoch_seen, out.header.epoch)
            if out.verdict is not Verdict.ACCEPTED:
                if out.verdict is Verdict.BROKEN:
                    raise LedgerError(
                        f"partition {self.partition} offset {rec.offset} breaks the chain: {out.reason}"
                    )
                continue
            self._tree.append(out.hash)
            entry = LedgerEntry(
                self.partition,
                rec.offset,
                out.header.seq,
                out.header.epoch,
                out.hash,
                rec.value,
                rec.timestamp,
            )
            env = entry.envelope
            if env.command_id is not None:
                self.done[(env.command_id, env.event_type)] = Appended(
                    self.partition,
                    entry.seq,
                    entry.hash,
                    env.event_id,
                    env.event_type,
                    env.command_id,
                    rec.offset,
                    True,
                )
            if replay and self.on_replay is not None:
                self.on_replay(entry)

    async def _claim(self) -> None:
        for _ in range(8):
            epoch = max(self._max_epoch_seen, self.state.epoch) + 1
            env = make_envelope(
                prev_hash=self.state.tail_hash,
                partition=self.partition,
                seq=self.state.next_seq,
                epoch=epoch,
                event_type=CLAIM_TYPE,
                payload={
                    "writer_id": self.writer_id,
                    "epoch": epoch,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                },
                tenant_id="",
                client_id="",
                command_id=None,
            )
            fut = await self._producer.send(self.topic, env.encode(), partition=self.partition)
            await fut
            await self._catch_up(replay=True)
            if self.state.epoch == epoch:
                self.epoch = epoch
                log.info(
                    "writer %s owns ledger partition %d at epoch %d", self.writer_id, self.partition, epoch
                )
                return
            self._max_epoch_seen = max(self._max_epoch_seen, epoch)
        raise WriterFenced(f"could not claim partition {self.partition}")

    # -- appending -------------------------------------------------------------
    def is_done(self, command_id: str, event_type: str) -> Appended | None:
        return self.done.get((command_id, _full(event_type)))

    async def append(
        self,
        event_type: str,
        payload: dict,
        *,
        tenant_id: str = "",
        client_id: str = "",
        command_id: str | None = None,
    ) -> Appended:
        [result] = await self.append_many([(event_type, payload, tenant_id, client_id, command_id)])
        return result

    async def append_many(self, events: list[tuple[str, dict, str, str, str | None]]) -> list[Appended]:
        """Append several events in order; returns when all are acknowledged (acks=all)."""
        if self._broken is not None:
            raise WriterBroken(f"writer for partition {self.partition} must recover: {self._broken}")
        if self.epoch == 0:
            raise LedgerError("writer not started")
        results: list[Appended | None] = []
        to_send: list[tuple[int, bytes | None, bytes]] = []
        futures: list[tuple[asyncio.Future, list[int]]] = []
        async with self._lock:
            for event_type, payload, tenant_id, client_id, command_id in events:
                full = _full(event_type)
                if command_id is not None and (command_id, full) in self.done:
                    prev = self.done[(command_id, full)]
                    results.append(Appended(**{**prev.__dict__, "duplicate": True}))
                    continue
                env = make_envelope(
                    prev_hash=self.state.tail_hash,
                    partition=self.partition,
                    seq=self.state.next_seq,
                    epoch=self.epoch,
                    event_type=full,
                    payload=payload,
                    tenant_id=tenant_id,
                    client_id=client_id,
                    command_id=command_id,
                )
                raw = env.encode()
                out = self.state.feed(raw)
                if out.verdict is not Verdict.ACCEPTED:  # cannot happen unless state is corrupt
                    raise LedgerError(f"own record rejected: {out.reason}")
                self._tree.append(out.hash)
                appended = Appended(self.partition, env.seq, out.hash, env.event_id, full, command_id, None)
                if command_id is not None:
                    self.done[(command_id, full)] = appended
                to_send.append((len(results), (client_id or tenant_id).encode() or None, raw))
                results.append(appended)
            # Records go out in producer batches built here (aiokafka's per-message send
            # costs more than the rest of an append); one partition, so order is kept.
            try:
                batch, members = self._producer.create_batch(), []
                for index, key, raw in to_send:
                    if batch.append(timestamp=None, key=key, value=raw) is None:
                        futures.append(
                            (
                                await self._producer.send_batch(batch, self.topic, partition=self.partition),
                                members,
                            )
                        )
                        batch, members = self._producer.create_batch(), []
                        if batch.append(timestamp=None, key=key, value=raw) is None:
                            raise LedgerError(f"record of {len(raw)} bytes exceeds the producer batch size")
                    members.append(index)
                if members:
                    futures.append(
                        (
                            await self._producer.send_batch(batch, self.topic, partition=self.partition),
                            members,
                        )
                    )
            except BaseException as exc:
                self._broken = exc
                raise WriterBroken(str(exc)) from exc
        for fut, members in futures:
            try:
                md = await fut
            except BaseException as exc:
                self._broken = exc
                raise WriterBroken(f"append not acknowledged: {exc}") from exc
            for j, index in enumerate(members):
                results[index] = Appended(**{**results[index].__dict__, "offset": md.offset + j})
        self._since_checkpoint += len(to_send)
        if (
            self.checkpoint_every
            and self._since_checkpoint >= self.checkpoint_every
            and self.signer is not None
        ):
            if self._checkpoint_task is None or self._checkpoint_task.done():
                self._since_checkpoint = 0
                self._checkpoint_task = asyncio.ensure_future(self.checkpoint())
        return results  # type: ignore[return-value]

    # -- checkpoints -----------------------------------------------------------
    @property
    def uncheckpointed(self) -> int:
        """Accepted events not covered by a checkpoint (the CheckpointSigned record aside)."""
        return max(0, self.state.next_seq - self.checkpointed_size - (1 if self.checkpointed_size else 0))

    async def checkpoint(self):
        """Sign a Merkle checkpoint over every accepted event so far and publish it."""
        from tensafe.events.checkpoints import make_checkpoint, publish_checkpoint

        if self.signer is None:
            raise LedgerError("no signing key configured for checkpoints")
        async with self._lock:
            size = self.state.next_seq
            root = self._tree.root(size)
            head = self.state.hash_at(size - 1)
        cp = make_checkpoint(self.signer, self.ledger_id, self.partition, size, root, head)
        self.checkpointed_size = size
        await publish_checkpoint(self._producer, self.checkpoint_topic, cp)
        await self.append(
            "CheckpointSigned",
            {
                "tree_size": cp.tree_size,
                "root": cp.root,
                "head_hash": cp.head_hash,
                "signer_key_id": cp.signer_key_id,
                "body": cp.body,
                "signature": cp.signature,
            },
        )
        return cp


class LedgerFollower:
    """Reads one partition in order and yields accepted records, applying the chain rules.

    Rejected records (stale epoch, lost claims, duplicates) are skipped and counted;
    a broken chain raises, because nothing after it can be trusted.
    """

    def __init__(self, bootstrap: str, partition: int, *, topic: str = LEDGER) -> None:
        self.bootstrap = bootstrap
        self.partition = partition
        self.topic = topic
        self.state = ChainState(partition)
        self.next_offset = 0
        self.rejected: dict[str, int] = {}

    def _feed(self, rec) -> LedgerEntry | None:
        self.next_offset = rec.offset + 1
        out = self.state.feed(rec.value)
        if out.verdict is Verdict.ACCEPTED:
            return LedgerEntry(
                self.partition,
                rec.offset,
                out.header.seq,
                out.header.epoch,
                out.hash,
                rec.value,
                rec.timestamp,
            )
        if out.verdict is Verdict.BROKEN:
            raise LedgerError(
                f"partition {self.partition} offset {rec.offset} breaks the chain: {out.reason}"
            )
        self.rejected[out.verdict.value] = self.rejected.get(out.verdict.value, 0) + 1
        return None

    async def read_to_end(self) -> AsyncIterator[LedgerEntry]:
        async for rec in kafka_io.read_partition(
            self.bootstrap, self.topic, self.partition, start_offset=self.next_offset
        ):
            entry = self._feed(rec)
            if entry is not None:
                yield entry

    async def follow(self, stop: asyncio.Event | None = None) -> AsyncIterator[LedgerEntry]:
        async for rec in kafka_io.follow_partition(
            self.bootstrap, self.topic, self.partition, start_offset=self.next_offset, stop=stop
        ):
            entry = self._feed(rec)
            if entry is not None:
                yield entry


async def follow_many(
    followers: list[LedgerFollower], stop: asyncio.Event | None = None
) -> AsyncIterator[LedgerEntry]:
    """Follow several partitions of one ledger topic with one consumer (one idle fetch
    for all of them); each record still goes through its partition's chain rules."""
    if not followers:
        return
    by_partition = {f.partition: f for f in followers}
    first = followers[0]
    starts = {f.partition: f.next_offset for f in followers}
    async for rec in kafka_io.follow_partitions(first.bootstrap, first.topic, starts, stop=stop):
        entry = by_partition[rec.partition]._feed(rec)
        if entry is not None:
            yield entry
