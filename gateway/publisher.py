"""Turning accepted requests into commands on tensafe.commands.

* Sensitive inputs (token ids, texts, prompts) are Avro-encoded as their
  ``tensafe.data.*`` record and sealed with the tenant's current data key
  (``tensafe.crypto.sealed``: the blob names its DEK) *before* the command is
  built: nothing in clear reaches Kafka. The sealing context is the command type,
  which is what the trainer opens with.
* The record goes to ``partition_for(client_id, P)`` with acks=all; only after the
  broker acknowledged it does the gateway answer 2xx (API.md §5 ordering).
* Gateway-side facts that have no field in the command schema travel as Kafka
  record headers, never in the hashed ledger: ``tensafe-idem`` (fingerprint and
  2xx answer of an idempotent request, for replays after a restart) and
  ``tensafe-extras`` (request values the schema cannot carry yet).
"""

from __future__ import annotations

import json
from typing import Any

from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError
from tensafe.crypto.errors import KeyDestroyed, KeyNotFound
from tensafe.crypto.sealed import seal
from tensafe.events import codec
from tensafe.events.commands import Command, partition_for
from tensafe.gateway.errors import ApiError, forbidden, payload_too_large


class CommandPublisher:
    def __init__(
        self, producer: Any, topic: str, partitions: int, keyring: Any, max_command_bytes: int
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.keyring = keyring
        self.max_command_bytes = max_command_bytes

    def seal_record(self, tenant_id: str, context: str, schema: str, record: dict[str, Any]) -> bytes:
        """Avro-encode a ``tensafe.data`` record and seal it under the tenant's DEK."""
        clear = codec.encode(schema, record)
        try:
            return seal(self.keyring, tenant_id, context, clear)
        except KeyNotFound:
            # A tenant created without the keyring at hand: give it its KEK now.
            self.keyring.create_tenant(tenant_id)
            return seal(self.keyring, tenant_id, context, clear)
        except KeyDestroyed:
            raise forbidden("this tenant's keys were destroyed (crypto-shredded)") from None

    def encode(self, cmd: Command) -> bytes:
        raw = cmd.encode()
        if len(raw) > self.max_command_bytes:
            # One command is one Kafka record (kafka_io.MAX_REQUEST_SIZE).
            err = payload_too_large(self.max_command_bytes)
            err.message = f"the encoded command is {len(raw)} bytes, more than one record may hold ({self.max_command_bytes})"
            err.details["reason"] = "command_too_large"
            raise err
        return raw

    async def publish(self, cmd: Command, raw: bytes, headers: dict[str, Any]) -> int:
        """Send with acks=all to the client's partition and wait for the ack; the record's offset."""
        hdrs = [
            (k, json.dumps(v, separators=(",", ":")).encode()) for k, v in headers.items() if v is not None
        ]
        try:
            fut = await self.producer.send(
                self.topic,
                raw,
                key=cmd.client_id.encode(),
                partition=partition_for(cmd.client_id, self.partitions),
                headers=hdrs or None,
            )
            md = await fut
        except (KafkaTimeoutError, RequestTimedOutError) as exc:
            raise ApiError(
                504, "upstream_timeout", "the broker did not acknowledge the command in time", {}
            ) from exc
        except Exception as exc:  # broker trouble is the client's retryable 503, not a 500
            raise ApiError(
                503,
                "unavailable",
                f"could not publish the command: {type(exc).__name__}",
                {},
                {"Retry-After": "1"},
            ) from exc
        return md.offset
