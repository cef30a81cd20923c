"""Test harness for the gateway: the app in-process (httpx ASGITransport + lifespan)
and a stand-in trainer that speaks the real wire contract.

``FakeTrainer`` consumes ``tensafe.commands`` with aiokafka and, per partition,
appends ``CommandAccepted`` + an outcome with a real ``LedgerWriter`` (same
command id), exactly as the trainer worker does; it opens the sealed inputs with
the tenant key, so the tests also check that the gateway sealed them the way the
trainer expects. What it answers is decided by ``behave(cmd)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tensafe.crypto.keyring import Keyring
from tensafe.crypto.sealed import open_sealed, seal
from tensafe.events import codec, kafka_io
from tensafe.events.commands import FAILURE_EVENTS, SUCCESS_EVENT, Command
from tensafe.events.ledger import LedgerWriter
from tensafe.events.topics import TopicNames, topic_names
from tensafe.gateway import Settings, create_app
from tensafe.gateway.tenants import TenantStore

PARTITIONS = 4
Outcome = list[tuple[str, dict[str, Any]]]  # [(event type, payload)], after CommandAccepted


def make_keyring(path: Path) -> Keyring:
    return Keyring.open_local(path, master_key=os.urandom(32).hex())


@dataclass
class Tenant:
    tenant_id: str
    key: str

    @property
    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


class FakeTrainer:
    def __init__(
        self, bootstrap: str, topics: TopicNames, keyring: Keyring, partitions: int = PARTITIONS
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.keyring = keyring
        self.partitions = partitions
        self.writers: dict[int, LedgerWriter] = {}
        self.seen: list[Command] = []  # every command record read (duplicates included)
        self.executed: list[str] = []  # command ids executed (once each)
        self.opened: dict[str, dict[str, Any]] = {}  # command id -> opened sealed input
        self.behave: Callable[[Command], Outcome | None] = self.default
        self.hold = False  # accept nothing until released (commands queue)
        self._held: dict[int, list[Command]] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._steps: dict[str, int] = {}
        self._eps: dict[str, float] = {}

    async def start(self) -> FakeTrainer:
        for p in range(self.partitions):
            w = LedgerWriter(
                self.bootstrap, p, topic=self.topics.ledger, checkpoint_topic=self.topics.checkpoints
            )
            await w.start()
            self.writers[p] = w
        self._tasks = [asyncio.create_task(self._consume(p)) for p in range(self.partitions)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self.writers.values():
            await w.stop()

    async def release(self) -> None:
        self.hold = False
        for p, cmds in list(self._held.items()):
            self._held[p] = []
            for c in cmds:
                await self._execute(p, c)

    async def _consume(self, p: int) -> None:
        async for rec in kafka_io.follow_partition(self.bootstrap, self.topics.commands, p, stop=self._stop):
            cmd = Command.decode(rec.value)
            self.seen.append(cmd)
            w = self.writers[p]
            if any(w.is_done(cmd.command_id, e) for e in [SUCCESS_EVENT[cmd.command_type], *FAILURE_EVENTS]):
                continue  # exactly-once effect: a duplicate command id is skipped, as the trainer does
            if cmd.command_type == "CancelCommand":
                await self._cancel(p, cmd)
            elif self.hold:
                self._held.setdefault(p, []).append(cmd)
            else:
                await self._execute(p, cmd)

    async def _cancel(self, p: int, cmd: Command) -> None:
        target = cmd.payload["target_command_id"]
        held = self._held.get(p, [])
        w = self.writers[p]
        for c in held:
            if c.command_id == target:
                held.remove(c)
                await w.append(
                    "CommandCancelled",
                    {"command_type": "tensafe.command." + c.command_type, "cancel_command_id": cmd.command_id},
                    tenant_id=c.tenant_id, client_id=c.client_id, command_id=c.command_id,
                )  # fmt: skip
                return
        await self._execute(p, cmd)

    async def _execute(self, p: int, cmd: Command) -> None:
        w = self.writers[p]
        raw = cmd.encode()
        await w.append(
            "CommandAccepted",
            {
                "command_type": "tensafe.command." + cmd.command_type,
                "command_offset": 0,
                "command_sha256": hashlib.sha256(raw).digest(),
                "command_bytes": raw,
            },
            tenant_id=cmd.tenant_id, client_id=cmd.client_id, command_id=cmd.command_id,
        )  # fmt: skip
        self.executed.append(cmd.command_id)
        outcome = self.behave(cmd)
        for event_type, payload in outcome or ():
            await w.append(
                event_type,
                payload,
                tenant_id=cmd.tenant_id,
                client_id=cmd.client_id,
                command_id=cmd.command_id,
            )

    # -- default behaviour: succeed, like a tiny trainer --------------------------------------
    def open(self, cmd: Command, field_name: str, schema: str) -> dict[str, Any]:
        rec = codec.decode_as(
            schema, open_sealed(self.keyring, cmd.tenant_id, cmd.command_type, cmd.payload[field_name])
        )
        self.opened[cmd.command_id] = rec
        return rec

    def default(self, cmd: Command) -> Outcome:
        t, p, cid = cmd.command_type, cmd.payload, cmd.client_id
        if t == "CreateTrainingClient":
            ev = {k: p[k] for k in p if k != "seed"}
            ev.update(base_model_sha256="", seed=p.get("seed") or 7)
            return [("TrainingClientCreated", ev)]
        if t == "ForwardBackward":
            batch = self.open(cmd, "batch_ciphertext", "tensafe.data.TokenBatch")
            rows = batch["input_ids"]
            sealed = None
            if p["return_logprobs"]:
                lp = json.dumps([[-0.5] * len(r) for r in rows]).encode()
                sealed = seal(self.keyring, cmd.tenant_id, "ForwardBackwardCompleted", lp)
            ntok = sum(len(r) for r in rows)
            return [("ForwardBackwardCompleted", {
                "num_samples": len(rows), "num_tokens": ntok, "loss": 2.0, "loss_sum": 2.0 * ntok,
                "max_grad_norm": 1.0, "fraction_clipped": 0.5, "mean_grad_norm": 1.2, "max_sample_grad_norm": 3.0,
                "batch_sha256": "", "duration_ms": 1.0, "result_ciphertext": sealed,
            })]  # fmt: skip
        if t in ("OptimStep", "TrainStep"):
            step = self._steps[cid] = self._steps.get(cid, 0) + 1
            eps = self._eps[cid] = self._eps.get(cid, 0.0) + 0.5
            if t == "OptimStep":
                return [("OptimStepApplied", {
                    "step": step, "learning_rate": p["learning_rate"], "noise_multiplier": 1.0, "sample_rate": 0.01,
                    "samples_in_step": 4, "expected_batch_size": 4.0, "epsilon_spent": eps, "delta": 1e-5,
                    "accountant": "rdp", "sampling_mode": "client_batches", "duration_ms": 1.0,
                })]  # fmt: skip
            return [("TrainStepCompleted", {
                "step": step, "batch_size": 3, "num_tokens": 30, "loss": 1.5, "fraction_clipped": 0.1,
                "epsilon_spent": eps, "sample_rate": 0.01, "duration_ms": 1.0,
            })]  # fmt: skip
        if t == "Sample":
            inp = self.open(cmd, "prompts_ciphertext", "tensafe.data.SampleInput")
            n = len(inp["prompts"] or inp["prompt_tokens"]) * p["num_samples"]
            out = [
                {"text": f"completion {i}", "tokens": [5, 6], "logprobs": [-0.1, -0.2], "finish_reason": "length",
                 "prompt_tokens": 3, "completion_tokens": 2}
                for i in range(n)
            ]  # fmt: skip
            return [("SampleCompleted", {
                "num_prompts": n // p["num_samples"], "num_samples": n, "prompt_tokens": 3 * n, "completion_tokens": 2 * n,
                "temperature": p["temperature"], "max_tokens": p["max_tokens"], "duration_ms": 1.0,
                "prompts_ciphertext": p["prompts_ciphertext"],
                "completions_ciphertext": seal(self.keyring, cmd.tenant_id, "SampleCompleted", json.dumps(out).encode()),
            })]  # fmt: skip
        if t == "SaveState":
            art = "art_" + hashlib.sha256(cmd.command_id.encode()).hexdigest()[:24]
            return [("StateSaved", {
                "artifact_id": art, "name": p["name"], "content_sha256": "ab" * 32, "ciphertext_sha256": "cd" * 32,
                "size": 1234, "dek_id": "dek_test", "include_optimizer": p["include_optimizer"],
                "step": self._steps.get(cid, 0), "epsilon_spent": self._eps.get(cid, 0.0), "ledger_offset_hint": -1,
            })]  # fmt: skip
        if t == "LoadState":
            return [
                ("StateLoaded", {"artifact_id": p["artifact_id"], "content_sha256": "ab" * 32, "step": 1})
            ]
        if t == "RegisterDataset":
            data = open_sealed(self.keyring, cmd.tenant_id, "RegisterDataset", p["records_ciphertext"])
            self.opened[cmd.command_id] = codec.decode(data)[1]
            return [("DatasetRegistered", {
                "dataset_id": p["dataset_id"], "name": p["name"], "num_records": p["num_records"],
                "content_sha256": "ef" * 32, "artifact_id": "art_ds_" + p["dataset_id"][3:15],
            })]  # fmt: skip
        if t == "CancelCommand":
            return [("CommandFailed", {
                "command_type": "tensafe.command.CancelCommand", "error_code": "not_cancellable",
                "message": "the target command was already taken by the trainer",
            })]  # fmt: skip
        return [("CommandFailed", {"command_type": t, "error_code": "unknown_command", "message": t})]


@dataclass
class Env:
    """One test's world: topics, keyring, tenant store, settings; gateways come and go."""

    bootstrap: str
    topics: TopicNames
    prefix: str
    keyring: Keyring
    tenants_path: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self, **kw: Any) -> Settings:
        return Settings(
            bootstrap=self.bootstrap,
            keyring=self.keyring,
            tenants_path=self.tenants_path,
            topic_prefix=self.prefix,
            partitions=PARTITIONS,
            create_topics=False,
            cancel_wait_s=2.0,
            **{**self.overrides, **kw},
        )

    def tenant(self, name: str = "acme") -> Tenant:
        tid, key = TenantStore(self.tenants_path).create_tenant(name, keyring=self.keyring)
        return Tenant(tid, key)

    @contextlib.asynccontextmanager
    async def gateway(self, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(self.settings(**kw))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw"
            ) as client:
                client.app = app  # type: ignore[attr-defined]
                yield client

    @contextlib.asynccontextmanager
    async def trainer(self) -> AsyncIterator[FakeTrainer]:
        t = await FakeTrainer(self.bootstrap, self.topics, self.keyring).start()
        try:
            yield t
        finally:
            await t.stop()

    async def command_count(self) -> int:
        """Records on tensafe.commands, all partitions (high watermarks: right on Tansu)."""
        hw = await kafka_io.high_watermarks(self.bootstrap, self.topics.commands, range(PARTITIONS))
        return sum(hw.values())

    async def command_records(self) -> list[kafka_io.ConsumerRecord]:
        out = []
        for p in range(PARTITIONS):
            async for rec in kafka_io.read_partition(self.bootstrap, self.topics.commands, p):
                out.append(rec)
        return out


def env_for(bootstrap: str, prefix: str, tmp: Path) -> Env:
    return Env(bootstrap, topic_names(prefix), prefix, make_keyring(tmp / "keyring"), tmp / "tenants.json")


async def wait_status(
    client: httpx.AsyncClient, tenant: Tenant, future_id: str, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Long-poll a future until it is terminal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = await client.get(f"/api/v1/futures/{future_id}", params={"wait": 5}, headers=tenant.h)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in ("completed", "failed", "cancelled") or loop.time() > deadline:
            return body


# -- a real server (uvicorn in a thread, its own event loop) for sync clients and fuzzing --------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(settings: Settings) -> Any:
    """Serve ``create_app(settings)`` with uvicorn on a free loopback port; yields the base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="gateway-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def run_sync(coro: Any) -> Any:
    """Run a coroutine from sync test code (pytest-asyncio may own this thread's loop)."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["e"] = e

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")
