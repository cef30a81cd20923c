"""Commands on tensafe.commands: routing, encoding, and which ledger events end them.

The gateway (or any second API surface) publishes; the trainer that owns the
partition executes; both agree on the partition through ``partition_for`` and on
completion through ``TERMINAL_EVENTS``.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

from tensafe.events import codec

COMMAND_SCHEMA = "tensafe.command.Command"
CMD_NS = "tensafe.command."
EVENT_NS = "tensafe.event."

# command type -> the ledger event types that complete it successfully
SUCCESS_EVENT = {
    "CreateTrainingClient": "TrainingClientCreated",
    "ForwardBackward": "ForwardBackwardCompleted",
    "OptimStep": "OptimStepApplied",
    "TrainStep": "TrainStepCompleted",
    "Sample": "SampleCompleted",
    "SaveState": "StateSaved",
    "LoadState": "StateLoaded",
    "RegisterDataset": "DatasetRegistered",
    "CancelCommand": "CommandCancelled",
    "CreatePackage": "PackageCreated",
    "CreateTenantKey": "TenantKeyCreated",
    "RotateTenantKey": "KeyRotated",
    "ShredTenant": "TenantShredded",
}
# commands about a tenant's keys: keyed (and partitioned) by tenant id, no training client
TENANT_COMMANDS = {"CreateTenantKey", "RotateTenantKey", "ShredTenant"}
# events that end a command with an error (the future fails with a code)
FAILURE_EVENTS = {"CommandFailed", "BudgetRefused", "CommandCancelled"}
TERMINAL_EVENTS = set(SUCCESS_EVENT.values()) | FAILURE_EVENTS


def short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of a training client (or dataset) id: SHA-256, not Kafka's murmur2,
    so every language and every process computes the same number."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % partitions


def command_id_for(tenant_id: str, idempotency_key: str) -> str:
    """Same tenant + same idempotency key -> same command id, whichever gateway retries."""
    return "cmd_" + hashlib.sha256(f"{tenant_id}\x00{idempotency_key}".encode()).hexdigest()[:32]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Command:
    command_id: str
    command_type: str  # short name, e.g. "OptimStep"
    tenant_id: str
    client_id: str
    payload: dict
    ts_ms: int = 0

    def encode(self) -> bytes:
        return codec.encode(
            COMMAND_SCHEMA,
            {
                "command_id": self.command_id,
                "command_type": CMD_NS + self.command_type,
                "tenant_id": self.tenant_id,
                "client_id": self.client_id,
                "ts_ms": self.ts_ms or int(time.time() * 1000),
                "payload": codec.encode(CMD_NS + self.command_type, self.payload),
            },
        )

    @classmethod
    def decode(cls, raw: bytes) -> Command:
        rec = codec.decode_as(COMMAND_SCHEMA, raw)
        ctype = rec["command_type"]
        return cls(
            command_id=rec["command_id"],
            command_type=short(ctype),
            tenant_id=rec["tenant_id"],
            client_id=rec["client_id"],
            payload=codec.decode_as(ctype, rec["payload"]),
            ts_ms=rec["ts_ms"],
        )


async def publish_command(producer, topic: str, partitions: int, cmd: Command) -> int:
    """Publish with acks=all to the client's partition; returns the command's offset."""
    raw = cmd.encode()
    key = cmd.client_id or cmd.tenant_id  # tenant-level commands have no client
    fut = await producer.send(topic, raw, key=key.encode(), partition=partition_for(key, partitions))
    md = await fut
    return md.offset
