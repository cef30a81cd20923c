"""TenSafe's topics, and creating them with their final shape.

Tansu cannot add partitions to an existing topic (no CreatePartitions), and the
ledger's partitioning is part of its identity (one hash chain per partition), so
topics are created once with their final partition count and every start checks
that the count still matches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger(__name__)

COMMANDS = "tensafe.commands"
LEDGER = "tensafe.ledger"
CHECKPOINTS = "tensafe.checkpoints"
TOPICS: tuple[str, str, str] = (COMMANDS, LEDGER, CHECKPOINTS)

# Topic configs for a real Kafka. The ledger and its checkpoints are the system of
# record: never delete by age or size. Tansu accepts and ignores configs (it has no
# retention or compaction at all).
TOPIC_CONFIGS: Mapping[str, Mapping[str, str]] = {
    COMMANDS: {},
    LEDGER: {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
    CHECKPOINTS: {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
}

# Kafka error codes we handle by name.
_TOPIC_ALREADY_EXISTS = 36
_INVALID_CONFIG = 40
_POLICY_VIOLATION = 44
_UNKNOWN_TOPIC = 3
_LEADER_NOT_AVAILABLE = 5


class TopicError(RuntimeError):
    """A topic could not be created or does not have the shape TenSafe needs."""


class TopicPartitionMismatch(TopicError):
    """A topic exists with a different partition count than requested.

    Tansu cannot add partitions, and adding them on Kafka would re-route keys and
    split ledger chains: recreate the topics (new prefix) or pass the existing count.
    """

    def __init__(self, mismatches: Mapping[str, tuple[int, int]]) -> None:
        self.mismatches = dict(mismatches)
        detail = ", ".join(
            f"{t}: has {have}, wanted {want}" for t, (have, want) in sorted(self.mismatches.items())
        )
        super().__init__(
            f"partition count mismatch ({detail}). Partitions cannot be added later (Tansu has no "
            "CreatePartitions; on Kafka it would re-route keys and split ledger chains). "
            "Use the existing count or a fresh topic prefix."
        )


@dataclass(frozen=True)
class TopicNames:
    """The three topic names under one prefix (``prefix + "tensafe.ledger"`` etc.)."""

    commands: str = COMMANDS
    ledger: str = LEDGER
    checkpoints: str = CHECKPOINTS

    def all(self) -> tuple[str, str, str]:
        return (self.commands, self.ledger, self.checkpoints)


def topic_names(topic_prefix: str = "") -> TopicNames:
    """Topic names under a namespace. A prefix lets tests (or tenants of one dev
    broker) share a broker without seeing each other's records. Kafka topic names
    allow ``[a-zA-Z0-9._-]``, max 249 chars."""
    _check_name(topic_prefix + LEDGER)
    return TopicNames(*(topic_prefix + t for t in TOPICS))


def _check_name(name: str) -> None:
    if not name or len(name) > 249 or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in name):
        raise ValueError(f"invalid Kafka topic name {name!r}")


async def ensure_topics(
    bootstrap: str,
    partitions: int = 4,
    replication: int = 1,
    topic_prefix: str = "",
    *,
    timeout: float = 30.0,
) -> TopicNames:
    """Create TenSafe's topics if missing; verify every one has ``partitions``.

    Idempotent: existing topics with the right count are fine. Raises
    :class:`TopicPartitionMismatch` when one exists with another count.
    Returns the (prefixed) names.
    """
    names = topic_names(topic_prefix)
    configs = {
        prefixed: dict(TOPIC_CONFIGS[base]) for base, prefixed in zip(TOPICS, names.all(), strict=True)
    }
    if replication >= 3:
        # A write acked by acks=all survives one broker loss only with ISR >= 2.
        for c in configs.values():
            c["min.insync.replicas"] = "2"
    await create_topics(
        bootstrap,
        {t: partitions for t in names.all()},
        replication=replication,
        configs=configs,
        timeout=timeout,
    )
    return names


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int] | Iterable[str],
    *,
    partitions: int = 4,
    replication: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Create topics (name → partition count) if missing and verify their counts.

    ``topics`` may be a list of names (all get ``partitions``). Returns the
    verified name → partition count.
    """
    wanted = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions)
    for name, n in wanted.items():
        _check_name(name)
        if n < 1:
            raise ValueError(f"{name}: partitions must be >= 1")
    configs = configs or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        new = [
            NewTopic(name, n, replication, topic_configs=dict(configs.get(name, {})))
            for name, n in wanted.items()
        ]
        errors = await _create(admin, new, timeout)
        bad_config = {t for t, (code, _) in errors.items() if code in (_INVALID_CONFIG, _POLICY_VIOLATION)}
        if bad_config:
            # Some Kafka-compatibles reject configs they don't know. Retention matters
            # on real Kafka only; there a rejection is a real problem, so say so loudly.
            log.warning(
                "broker rejected topic configs for %s (%s); creating them without configs",
                sorted(bad_config),
                {t: errors[t][1] for t in bad_config},
            )
            retry = [
                NewTopic(t.name, t.num_partitions, t.replication_factor) for t in new if t.name in bad_config
            ]
            errors.update(await _create(admin, retry, timeout))
            for t in bad_config:
                errors.setdefault(t, (0, None))
        failed = {t: e for t, e in errors.items() if e[0] not in (0, _TOPIC_ALREADY_EXISTS)}
        if failed:
            raise TopicError(
                "could not create topics: "
                + ", ".join(
                    f"{t}: {for_code(c).__name__} {m or ''}".strip() for t, (c, m) in sorted(failed.items())
                )
            )
        have = await _partition_counts(admin, list(wanted), timeout)
    finally:
        await admin.close()
    mismatches = {t: (have[t], n) for t, n in wanted.items() if have[t] != n}
    if mismatches:
        raise TopicPartitionMismatch(mismatches)
    return have


async def _create(
    admin: AIOKafkaAdminClient, new: list[NewTopic], timeout: float
) -> dict[str, tuple[int, str | None]]:
    if not new:
        return {}
    # aiokafka returns per-topic error codes instead of raising (e.g. 36 = exists).
    resp = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
    out: dict[str, tuple[int, str | None]] = {}
    for entry in resp.topic_errors:
        name, code = entry[0], entry[1]
        msg = entry[2] if len(entry) > 2 else None
        out[name] = (code, msg)
    return out


async def partition_counts(bootstrap: str, topics: Iterable[str], *, timeout: float = 30.0) -> dict[str, int]:
    """Partition count of each topic; raises TopicError for a topic that does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        return await _partition_counts(admin, list(topics), timeout, wait=False)
    finally:
        await admin.close()


async def _describe(admin: AIOKafkaAdminClient, topics: list[str]) -> list[dict]:
    # Why not admin.describe_topics: it sends Metadata with allow_auto_topic_creation
    # =True, and Tansu (like Kafka with auto.create.topics.enable) then CREATES the
    # topic with 4 partitions. Looking must not create. (_send_request is private
    # aiokafka API; the version is pinned.)
    resp = await admin._send_request(MetadataRequest(topics, allow_auto_topic_creation=False))
    return resp.to_object()["topics"]


async def _partition_counts(
    admin: AIOKafkaAdminClient, topics: list[str], timeout: float, *, wait: bool = True
) -> dict[str, int]:
    # Metadata can lag a create on a real cluster (leader election): retry briefly.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            desc = await _describe(admin, topics)
        except KafkaError as e:
            desc, last = [], e
        else:
            last = None
        counts: dict[str, int] = {}
        pending: dict[str, int] = {}
        for d in desc:
            code = d["error_code"]
            if code == 0 and d["partitions"]:
                counts[d["topic"]] = len(d["partitions"])
            else:
                pending[d["topic"]] = code
        if all(t in counts for t in topics):
            return {t: counts[t] for t in topics}
        if not wait or loop.time() > deadline:
            missing = {t: pending.get(t) for t in topics if t not in counts}
            raise TopicError(f"topics not available: {missing} {last or ''}".strip())
        if any(c not in (_UNKNOWN_TOPIC, _LEADER_NOT_AVAILABLE, None) for c in pending.values()):
            raise TopicError(f"describe_topics failed: {pending}")
        await asyncio.sleep(0.1)
