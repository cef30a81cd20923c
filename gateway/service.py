"""The API-independent core of the gateway: publish commands, answer from the read model.

Routes of any API surface (the TenSafe REST API today, the Tinker wire protocol
later) parse their own wire format, then call this: ``client_for`` (tenant
scoped, state checks), ``submit`` (idempotent publish), ``wait`` (futures),
``cancel``. Two surfaces publishing the same ``Command`` values is what lets a
Tinker client and a TenSafe client drive the same trainer and ledger.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tensafe.events import kafka_io
from tensafe.events.commands import Command
from tensafe.events.topics import ensure_topics, topic_names
from tensafe.gateway import ids
from tensafe.gateway.auth import Authenticator
from tensafe.gateway.errors import ApiError, conflict, not_found
from tensafe.gateway.followers import LogFollowers
from tensafe.gateway.futures import FutureRec
from tensafe.gateway.idempotency import IdempotencyStore, Reservation
from tensafe.gateway.publisher import CommandPublisher
from tensafe.gateway.readmodel import ClientRec, DatasetRec, ReadModel
from tensafe.gateway.settings import Settings
from tensafe.gateway.tenants import TenantStore

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A command ready to publish and the 2xx answer that announces it."""

    command: Command
    status: int
    body: dict[str, Any]
    extras: dict[str, Any] | None = None  # request values without a command field (Kafka header)


@dataclass
class Submitted:
    status: int
    body: dict[str, Any]
    replayed: bool
    future: FutureRec | None


def now_ms() -> int:
    return int(time.time() * 1000)


class GatewayService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = topic_names(settings.topic_prefix)
        self.model = ReadModel()
        self.tenants = TenantStore(settings.tenants_path)
        self.auth = Authenticator(self.tenants)
        self.idempotency = IdempotencyStore(settings.idempotency_ttl_s, self._known_command)
        self.followers = LogFollowers(
            settings.bootstrap,
            self.topics,
            settings.partitions,
            self.model,
            commands=settings.follow_commands,
            commands_live=settings.follow_commands_live,
        )
        self.producer: Any = None
        self.publisher: CommandPublisher | None = None
        self.started = False
        self._broker_checked_at = 0.0
        self._broker_ok = True

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.create_topics:
            await ensure_topics(s.bootstrap, partitions=s.partitions, topic_prefix=s.topic_prefix)
        # linger 0: a request waits for its own record's ack, batching would only add latency
        # (under load aiokafka still batches whatever queues while a request is in flight).
        self.producer = kafka_io.make_producer(s.bootstrap, client_id="tensafe-gateway", linger_ms=0)
        await self.producer.start()
        self.publisher = CommandPublisher(
            self.producer, self.topics.commands, s.partitions, s.keyring, s.max_command_bytes
        )
        # The read model is the whole log: serve only once it is caught up (read-your-writes
        # across restarts, idempotent replays of requests answered before the restart).
        await self.followers.catch_up()
        self.followers.start()
        self.started = True
        log.info(
            "gateway ready: %d ledger records, %d commands replayed",
            self.model.ledger_records,
            self.model.command_records,
        )

    async def stop(self) -> None:
        self.started = False
        await self.followers.stop()
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def health(self) -> list[str]:
        """Reasons the gateway is degraded (empty: healthy). A metadata round trip proves
        the broker answers; it is cached for a second so probes cannot hammer it."""
        reasons = self.followers.healthy()
        if not self.started or self.producer is None:
            return [*reasons, "not started"]
        now = time.monotonic()
        if now - self._broker_checked_at > 1.0:
            self._broker_checked_at = now
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), 2.0)
                self._broker_ok = True
            except Exception:  # noqa: BLE001 - any failure means "unreachable"
                self._broker_ok = False
        if not self._broker_ok:
            reasons.append("broker unreachable")
        return reasons

    # -- lookups ---------------------------------------------------------------------------
    def _known_command(self, tenant_id: str, key: str) -> FutureRec | None:
        return self.model.future(tenant_id, ids.command_id(tenant_id, key))

    def client_for(self, tenant_id: str, client_id: str, *, command: str | None = None) -> ClientRec:
        """The tenant's client, or 404; with ``command``, also the state checks of API.md §3 (409/422)."""
        c = self.model.client(tenant_id, client_id)
        if c is None:
            raise not_found("training_client")
        if command is None:
            return c
        if c.status == "failed":
            raise conflict("client_failed", "the training client failed to be created", status=c.status)
        sampling = c.create.get("sampling_mode")
        if command == "ForwardBackward" and sampling == "poisson":
            raise conflict(
                "sampling_mode", "a poisson client's batches are drawn by the server: use train_step"
            )
        if command == "TrainStep" and sampling != "poisson":
            raise conflict(
                "sampling_mode", "train_step needs a client created with a dataset and sampling 'poisson'"
            )
        if command in ("OptimStep", "TrainStep") and c.create.get("dp_enabled", True):
            target = c.create.get("target_epsilon")
            if c.budget_refused is not None or (target is not None and c.epsilon_spent >= target):
                raise ApiError(
                    422,
                    "budget_exceeded",
                    "the privacy budget of this client cannot pay for another step",
                    {"epsilon_spent": c.epsilon_spent, "target_epsilon": target},
                )
        return c

    async def dataset_ready(self, d: DatasetRec) -> None:
        """Wait (``dataset_wait_s``) until the trainer registered the dataset: a Poisson
        client created before that would be refused by the trainer, which runs the
        dataset's partition and the client's partition independently."""
        if d.status == "pending" and d.command_id is not None:
            await self.model.futures.wait_for(
                d.command_id, lambda r: r.terminal, self.settings.dataset_wait_s
            )
        if d.status == "failed":
            raise conflict("dataset_failed", "the dataset could not be registered")
        if d.status != "ready":
            raise conflict("dataset_not_ready", "the dataset is still being registered; retry shortly")

    def future_for(self, tenant_id: str, future_id: str) -> FutureRec:
        cmd_id = ids.command_id_of(future_id)
        f = self.model.future(tenant_id, cmd_id) if cmd_id else None
        if f is None:
            raise not_found("future")
        return f

    # -- commands -----------------------------------------------------------------------------
    async def submit(
        self,
        tenant_id: str,
        reservation: Reservation,
        prepare: Callable[[str], Prepared | Awaitable[Prepared]],
    ) -> Submitted:
        """Publish the command ``prepare(command_id)`` builds, unless this is a replay.

        ``prepare`` gets the command id derived from the Idempotency-Key (fresh without
        one) and does all validation and sealing before anything is sent.
        """
        cmd_id = ids.command_id(tenant_id, reservation.key)
        if reservation.replay is not None:
            return Submitted(
                reservation.replay.status, reservation.replay.body, True, self.model.futures.get(cmd_id)
            )
        built = prepare(cmd_id)
        prep = await built if inspect.isawaitable(built) else built
        known = self.model.futures.get(cmd_id)
        if known is not None and (known.command_type, known.client_id) != (
            prep.command.command_type,
            prep.command.client_id,
        ):
            # Known from the ledger only (no fingerprint to compare): at least a key reused
            # for another operation or client is caught, instead of answering the old future.
            raise ApiError(
                409,
                "idempotency_conflict",
                "Idempotency-Key was already used for another operation",
                {"idempotency_key": reservation.key},
            )
        assert self.publisher is not None
        raw = self.publisher.encode(prep.command)
        headers = {
            "tensafe-idem": reservation.header_value(prep.status, prep.body),
            "tensafe-extras": prep.extras,
        }
        await self.publisher.publish(prep.command, raw, headers)
        byte_headers = {k: _json_bytes(v) for k, v in headers.items() if v is not None}
        fut = self.model.apply_command(prep.command, byte_headers)
        reservation.store(prep.status, prep.body)
        return Submitted(prep.status, prep.body, False, fut)

    async def wait(self, f: FutureRec, timeout: float) -> FutureRec:
        if timeout <= 0 or f.terminal:
            return f
        out = await self.model.futures.wait_for(f.command_id, lambda r: r.terminal, timeout)
        return out or f

    async def cancel(self, tenant_id: str, f: FutureRec) -> tuple[int, FutureRec, bool]:
        """Cancel a pending future: (HTTP status, target, cancel confirmed).

        Publishes a CancelCommand on the target's partition (so it queues behind the
        target in the trainer's order) and waits up to ``cancel_wait_s`` for the verdict.
        """
        if f.status == "cancelled":
            return 200, f, True
        if f.status != "pending":
            raise conflict("future_not_pending", f"the future is {f.status}", status=f.status)
        cancel_id = ids.internal_command_id(tenant_id, "cancel/" + f.command_id)
        cmd = Command(
            cancel_id, "CancelCommand", tenant_id, f.client_id, {"target_command_id": f.command_id}, now_ms()
        )
        if self.model.futures.get(cancel_id) is None:
            assert self.publisher is not None
            raw = self.publisher.encode(cmd)
            await self.publisher.publish(cmd, raw, {})
            self.model.apply_command(cmd)
        cancel = self.model.futures.get(cancel_id)

        def decided(r: FutureRec) -> bool:
            return r.status != "pending" or (cancel is not None and cancel.terminal)

        await self.model.futures.wait_for(f.command_id, decided, self.settings.cancel_wait_s)
        if f.status == "cancelled":
            return 200, f, True
        if f.status != "pending" or (cancel is not None and cancel.status == "failed"):
            status = f.status if f.status != "pending" else "running"
            raise conflict("future_not_pending", "the trainer already took the command", status=status)
        return 202, f, False  # not decided yet: the cancel is queued, poll the future


def _json_bytes(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":")).encode()
