"""Tasks that keep the read model in step with the log.

Per partition: a ``LedgerFollower`` (chain rules applied, only accepted entries)
and, unless disabled, a plain reader of tensafe.commands (futures of commands not
yet accepted, and the idempotency headers). ``catch_up`` reads every partition to
its current end before the app serves requests, so a restarted gateway answers
from the whole history; ``start`` then follows new records until ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from tensafe.events import codec, kafka_io
from tensafe.events.commands import Command
from tensafe.events.ledger import LedgerFollower, follow_many
from tensafe.events.topics import TopicNames
from tensafe.gateway.readmodel import ReadModel

log = logging.getLogger(__name__)


class LogFollowers:
    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        partitions: int,
        model: ReadModel,
        *,
        commands: bool,
        commands_live: bool,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions
        self.model = model
        self.follow_commands = commands
        self.follow_commands_live = commands and commands_live
        self.ledger = [LedgerFollower(bootstrap, p, topic=topics.ledger) for p in range(partitions)]
        self.command_offsets = [0] * partitions
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []

    async def catch_up(self) -> None:
        jobs = [self._ledger_to_end(f) for f in self.ledger]
        if self.follow_commands:
            jobs += [self._commands_to_end(p) for p in range(self.partitions)]
        await asyncio.gather(*jobs)

    async def _ledger_to_end(self, f: LedgerFollower) -> None:
        async with contextlib.aclosing(f.read_to_end()) as it:
            async for entry in it:
                self.model.apply_ledger(entry)

    async def _commands_to_end(self, p: int) -> None:
        it = kafka_io.read_partition(
            self.bootstrap, self.topics.commands, p, start_offset=self.command_offsets[p]
        )
        await self._apply_commands(p, it)

    async def _apply_commands(self, p: int, it: AsyncIterator[kafka_io.ConsumerRecord]) -> None:
        async with contextlib.aclosing(it) as records:
            async for rec in records:
                self.command_offsets[p] = rec.offset + 1
                known = self.model.futures.get(_peek_command_id(rec.value) or "")
                if known is not None and known.info.get("_from_command"):
                    continue  # published by this process (or seen already): nothing new to learn
                try:
                    cmd = Command.decode(rec.value)
                except (codec.DecodeError, ValueError, KeyError) as exc:
                    log.warning("commands p%d offset %d undecodable: %s", p, rec.offset, exc)
                    continue
                headers = {k: v for k, v in (rec.headers or ()) if k.startswith("tensafe-")}
                self.model.apply_command(cmd, headers)

    def start(self) -> None:
        # One consumer per topic for all partitions: one idle long-poll instead of one each.
        self._tasks.append(asyncio.create_task(self._run("ledger", self._follow_ledger())))
        if self.follow_commands_live:
            self._tasks.append(asyncio.create_task(self._run("commands", self._follow_commands())))

    async def _run(self, name: str, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported by /healthz, never silent
            log.exception("follower %s stopped", name)
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    async def _follow_ledger(self) -> None:
        async with contextlib.aclosing(follow_many(self.ledger, self._stop)) as it:
            async for entry in it:
                self.model.apply_ledger(entry)

    async def _follow_commands(self) -> None:
        starts = dict(enumerate(self.command_offsets))
        it = kafka_io.follow_partitions(self.bootstrap, self.topics.commands, starts, stop=self._stop)
        async with contextlib.aclosing(it) as records:
            async for rec in records:
                await self._apply_commands(rec.partition, _one(rec))

    def healthy(self) -> list[str]:
        """Reasons the read model may be stale (empty when all followers run)."""
        reasons = list(self.errors)
        for t in self._tasks:
            if t.done() and not t.cancelled() and not reasons:
                reasons.append("a log follower stopped")
        return reasons

    async def stop(self) -> None:
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=2.0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


async def _one(rec: kafka_io.ConsumerRecord) -> AsyncIterator[kafka_io.ConsumerRecord]:
    yield rec


def _peek_command_id(raw: bytes) -> str | None:
    """The command id without decoding the record: it is the first field of
    ``tensafe.command.Command`` (a zig-zag varint length, then UTF-8), right after the
    10-byte single-object header. Saves decoding every command this gateway published."""
    pos, shift, n = codec.HEADER_LEN, 0, 0
    while pos < len(raw) and shift < 35:
        b = raw[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    length = (n >> 1) ^ -(n & 1)
    if length <= 0 or length > 200 or pos + length > len(raw):
        return None
    try:
        return raw[pos : pos + length].decode("ascii")
    except UnicodeDecodeError:
        return None
