"""Live projectors: follow ``tensafe.ledger`` and keep a ReadModel current.

Two engines, one apply path (``ReadModel.apply``, which checks the chain itself):

* :func:`run_faust_projector` — a faust-streaming app (the design's projector). One
  agent on the ledger topic takes batches with ``stream.take_events(N, within)``
  and hands the raw bytes plus partition/offset of every record to the read model.
  ``processing_guarantee="at_least_once"`` (Tansu has no transactions), group
  session 10 s / heartbeat 1 s (Faust's 60 s default makes a join take 30 s).
  The read model, not the consumer group, is the source of truth for positions:
  before the app starts, the group's committed offsets are set to the model's
  ``projection_state`` (so a fresh database re-reads the log and a restored one
  resumes); redelivered records are skipped by offset.
* :func:`run_projector` — plain asyncio, one reader per partition feeding one
  applier through a queue; no consumer group, starts at once. For embedding in a
  process that owns its read model (the gateway, a single node).

Both take records as they come and apply what is queued at once (up to
``max_batch``): a lone event is visible within milliseconds, a burst is written
in a few large batches.

Run one as a process: ``python -m tensafe.projections.projector --db FILE`` (or
``tensafe project``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import sys
import uuid
from collections.abc import Callable
from typing import Any

from tensafe.events import kafka_io
from tensafe.events.topics import LEDGER, partition_counts
from tensafe.projections.readmodel import ChainBroken, RawRecord, ReadModel

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
TAKE_WITHIN_S = 0.2
# Tansu answers a Fetch only when its max wait expires, even if records arrive
# meanwhile (measured: mean lag ~ max_wait / 2). Faust hard-codes 1500 ms (lag
# ~0.4-0.75 s); 50 ms matches kafka_io's readers.
FETCH_MAX_WAIT_MS = 50


# --------------------------------------------------------------------------- asyncio


async def run_projector(
    bootstrap: str,
    readmodel: ReadModel,
    stop_event: asyncio.Event,
    *,
    topic: str = LEDGER,
    partitions: list[int] | None = None,
    max_batch: int = DEFAULT_BATCH,
) -> None:
    """Follow every partition of ``topic`` into ``readmodel`` until ``stop_event`` is set.

    Raises what stops it: :class:`~tensafe.projections.readmodel.ChainBroken` when the
    log does not link, or a broker error. Whatever was queued when ``stop_event`` is
    set is still applied.
    """
    if partitions is None:
        partitions = list(range((await partition_counts(bootstrap, [topic]))[topic]))
    # Bounded: a slow DuckDB pushes back on the readers instead of filling memory.
    queue: asyncio.Queue[RawRecord] = asyncio.Queue(maxsize=max(4 * max_batch, 1000))

    async def read() -> None:
        # Raw records, not LedgerFollower entries: the read model applies the chain
        # rules itself (the same code path as Faust and replay), so rejected records
        # are counted and its position advances past them exactly as in a replay.
        # One consumer for every partition: one idle long-poll, not one per partition.
        starts = {p: readmodel.next_offset(p) for p in partitions}
        gen = kafka_io.follow_partitions(bootstrap, topic, starts, stop=stop_event)
        async with contextlib.aclosing(gen):
            async for rec in gen:
                await queue.put(RawRecord(rec.partition, rec.offset, rec.value, rec.timestamp))

    async def apply() -> None:
        while True:
            if queue.empty():
                if stop_event.is_set() and all(t.done() for t in readers):
                    return
                getter = asyncio.ensure_future(queue.get())
                stopper = asyncio.ensure_future(stop_event.wait())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not getter.done():
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    await asyncio.sleep(0.01)  # readers are finishing their last fetch
                    continue
                batch = [getter.result()]
            else:
                batch = []
            while len(batch) < max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            await asyncio.to_thread(readmodel.apply, batch)

    readers = [asyncio.create_task(read(), name="projector-read")]
    applier = asyncio.create_task(apply(), name="projector-apply")
    tasks = {*readers, applier}
    try:
        while True:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            if applier in done:
                return
            tasks -= done
    finally:
        for t in (*readers, applier):
            t.cancel()
        await asyncio.gather(*readers, applier, return_exceptions=True)


# --------------------------------------------------------------------------- faust


def group_id_for(readmodel: ReadModel, topic: str) -> str:
    """A new consumer group for every run of a read model's projector.

    Per read model: two read models must each get every partition, never split them
    like members of one group. Per run: a crashed run leaves a dead member in its
    group until the session times out, which would block both the offset seeding
    (Kafka refuses commits from non-members of a non-empty group) and the next
    join for ~10 s. The positions live in the database, so the group is disposable.
    """
    topic_tag = hashlib.sha256(topic.encode()).hexdigest()[:8]
    return f"tensafe-projector-{readmodel.model_id[:12]}-{topic_tag}-{uuid.uuid4().hex[:8]}"


async def seed_group_offsets(bootstrap: str, group_id: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for ``group_id`` without joining it (the group must be empty).

    Faust starts each partition at its group's committed offset; setting it to the
    read model's position first makes the database the single source of truth.
    """
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    consumer = kafka_io.make_consumer(bootstrap, group_id)
    await consumer.start()
    try:
        tps = {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


class FaustProjector:
    """A faust.App whose one agent applies ledger batches to a ReadModel."""

    def __init__(
        self,
        bootstrap: str,
        readmodel: ReadModel,
        *,
        topic: str = LEDGER,
        app_id: str | None = None,
        max_batch: int = DEFAULT_BATCH,
        within: float = TAKE_WITHIN_S,
        datadir: str | None = None,
    ) -> None:
        import tempfile

        import faust

        self.bootstrap = bootstrap
        self.readmodel = readmodel
        self.topic_name = topic
        self.app_id = app_id or group_id_for(readmodel, topic)
        self.error: BaseException | None = None
        self.failed = asyncio.Event()
        self._tmp = None
        if datadir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tensafe-faust-")
            datadir = self._tmp.name
        self.app = faust.App(
            self.app_id,
            broker="kafka://" + bootstrap,
            processing_guarantee="at_least_once",  # exactly_once needs transactions: Tansu has none
            broker_session_timeout=10,
            broker_heartbeat_interval=1,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,  # no HTTP server inside a library / test process
            datadir=datadir,  # faust writes its own state dir; keep it out of the cwd
            store="memory://",
            topic_disable_leader=True,  # no "<app>-__assignor-__leader" topic: one member per group
            autodiscover=False,
        )
        ledger = self.app.topic(topic, key_serializer="raw", value_serializer="raw")

        async def project(stream: Any) -> None:
            # take_events, not take: the values alone lose each record's partition and
            # offset, which the chain check and the resume position need.
            async for events in stream.take_events(max_batch, within=within):
                if self.error is not None:
                    continue  # stopping: acknowledge nothing more into the model
                batch = [
                    RawRecord(e.message.partition, e.message.offset, e.value, int(e.message.timestamp * 1000))
                    for e in events
                ]
                try:
                    await asyncio.to_thread(self.readmodel.apply, batch)
                except Exception as exc:  # ChainBroken or DuckDB: stop the projector, report it
                    log.error("faust projector stops: %s", exc)
                    self.error = exc
                    self.failed.set()

        self.app.agent(ledger, name=f"{self.app_id}.project")(project)
        self.app.on_partitions_assigned.connect(self._shorten_fetch_wait)

    async def _shorten_fetch_wait(self, app: Any, assigned: Any = None, **kwargs: Any) -> None:
        # faust-streaming 0.15.3 passes fetch_max_wait_ms=1500 to aiokafka with no
        # setting to change it; the aiokafka consumer exists once partitions are
        # assigned, and its fetcher reads the value for every request.
        try:
            consumer = self.app.consumer._thread._consumer  # type: ignore[attr-defined]
            consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
            if consumer._fetcher is not None:
                consumer._fetcher._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        except AttributeError as exc:  # another faust/aiokafka layout: slower, still correct
            log.warning("could not shorten Faust's fetch wait (lag stays ~1 s): %s", exc)

    async def start(self) -> None:
        partitions = (await partition_counts(self.bootstrap, [self.topic_name]))[self.topic_name]
        offsets = {p: self.readmodel.next_offset(p) for p in range(partitions)}
        await seed_group_offsets(self.bootstrap, self.app_id, self.topic_name, offsets)
        await self.app.start()

    async def stop(self) -> None:
        try:
            await self.app.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()


async def run_faust_projector(
    bootstrap: str,
    readmodel: ReadModel,
    stop_event: asyncio.Event,
    *,
    topic: str = LEDGER,
    max_batch: int = DEFAULT_BATCH,
    within: float = TAKE_WITHIN_S,
) -> None:
    """Run the Faust projector in this event loop until ``stop_event`` (or a failure, raised)."""
    proj = FaustProjector(bootstrap, readmodel, topic=topic, max_batch=max_batch, within=within)
    await proj.start()
    try:
        stopper = asyncio.ensure_future(stop_event.wait())
        failer = asyncio.ensure_future(proj.failed.wait())
        await asyncio.wait({stopper, failer}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        failer.cancel()
    finally:
        await proj.stop()
    if proj.error is not None:
        raise proj.error


# --------------------------------------------------------------------------- process


def run_from_args(args: argparse.Namespace) -> int:
    from tensafe.events.node_config import resolve_bootstrap

    bootstrap = resolve_bootstrap(args.bootstrap, args.data_dir)
    topic = args.topic_prefix + LEDGER
    rm = ReadModel(args.db)
    if args.progress:
        rm.add_listener(_progress_printer())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.engine == "faust":
            await run_faust_projector(bootstrap, rm, stop, topic=topic, max_batch=args.max_batch)
        else:
            await run_projector(bootstrap, rm, stop, topic=topic, max_batch=args.max_batch)

    try:
        asyncio.run(main())
    except ChainBroken as exc:
        print(f"error: the ledger does not verify, projection stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        rm.close()
    return 0


def _progress_printer() -> Callable[[dict[int, int]], None]:
    seen: dict[int, int] = {}

    def show(done: dict[int, int]) -> None:
        seen.update(done)
        print(json.dumps({str(p): n for p, n in sorted(seen.items())}), flush=True)

    return show


def main(argv: list[str] | None = None) -> None:
    from tensafe.projections.cli import add_run_arguments

    parser = argparse.ArgumentParser(
        prog="python -m tensafe.projections.projector", description=__doc__.split("\n")[0]
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run_from_args(args))


if __name__ == "__main__":
    main()
