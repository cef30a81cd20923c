"""Shared pytest fixtures: one embedded broker per session, isolated topics per test.

Fixtures:
* ``broker`` (session): a started Kafka node with TenSafe's default topics. An
  in-memory Tansu, or ``ExternalKafka`` when ``TENSAFE_KAFKA_BOOTSTRAP`` is set.
  Use ``broker.bootstrap``.
* ``topic_prefix`` (function): a unique prefix whose three topics already exist
  (4 partitions); ``topic_names(topic_prefix).ledger`` etc.
* ``fresh_topics`` (function): ``await fresh_topics(partitions=1)`` → ``TopicNames``
  with a new unique prefix, as many times as a test needs.
* ``durable_node`` (function): factory ``durable_node(name="node", start=True, **kw)``
  → ``EmbeddedBroker("durable", tmp_path / name)``; same name = same data dir, so a
  second call after ``stop()`` is a restart. All are stopped at teardown.

Tests under tests/integration and tests/e2e are marked ``integration``
automatically; ``pytest tests/unit`` or ``-m "not integration"`` never starts a
broker, and a unit test asking for a broker fixture fails. A missing Tansu binary
is a hard error (it comes from a required dependency), never a skip.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tensafe.events.broker import BrokerBinaryMissing, EmbeddedBroker, ExternalKafka, KafkaNode, tansu_binary
from tensafe.events.topics import TopicNames, ensure_topics, topic_names

T = TypeVar("T")
_HERE = Path(__file__).parent
_BROKER_FIXTURES = {"broker", "topic_prefix", "fresh_topics", "durable_node"}
_INTEGRATION_DIRS = (_HERE / "integration", _HERE / "e2e")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a real broker (Tansu); started on demand")
    config.addinivalue_line("markers", "slow: long-running tests")


def _in(path: Path, dirs: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(d) for d in dirs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_broker = False
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if _in(path, _INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is not None:
            needs_broker = True
    if needs_broker and not os.environ.get("TENSAFE_KAFKA_BOOTSTRAP"):
        # Fail the run up front, loudly: the binary is a hard dependency, and a
        # skipped integration suite looks green.
        try:
            tansu_binary()
        except BrokerBinaryMissing as e:
            raise pytest.UsageError(f"integration tests selected but: {e}") from None


def pytest_runtest_setup(item: pytest.Item) -> None:
    path = Path(str(item.fspath)).resolve()
    used = _BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if used and item.get_closest_marker("integration") is None and not _in(path, _INTEGRATION_DIRS):
        pytest.fail(f"{item.nodeid} uses {sorted(used)} but is not an integration test (move it or mark it)")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a private thread and loop.

    Why a thread: sync fixtures run while pytest-asyncio owns the thread's event
    loop; asyncio.run() here would replace and then clear it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name="conftest-run-async")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}."


@pytest.fixture(scope="session")
def broker() -> Iterator[KafkaNode]:
    """The session's Kafka: in-memory Tansu (or ``$TENSAFE_KAFKA_BOOTSTRAP``), default topics created."""
    ext = os.environ.get("TENSAFE_KAFKA_BOOTSTRAP")
    node: KafkaNode = ExternalKafka(ext) if ext else EmbeddedBroker("memory")
    node.start()
    try:
        run_async(ensure_topics(node.bootstrap, partitions=4))
        yield node
    finally:
        node.stop()


@pytest.fixture
def topic_prefix(broker: KafkaNode) -> str:
    """A fresh namespace on the shared broker; its three topics exist (4 partitions)."""
    prefix = unique_prefix()
    run_async(ensure_topics(broker.bootstrap, partitions=4, topic_prefix=prefix))
    return prefix


@pytest.fixture
def fresh_topics(broker: KafkaNode) -> Callable[..., Awaitable[TopicNames]]:
    """``names = await fresh_topics(partitions=4)``: TenSafe's topics under a new unique prefix."""

    async def make(partitions: int = 4) -> TopicNames:
        prefix = unique_prefix()
        await ensure_topics(broker.bootstrap, partitions=partitions, topic_prefix=prefix)
        return topic_names(prefix)

    return make


@pytest.fixture
def durable_node(tmp_path: Path) -> Iterator[Callable[..., EmbeddedBroker]]:
    """Factory of durable nodes under tmp_path; every node made is stopped at teardown."""
    made: list[EmbeddedBroker] = []

    def make(name: str = "node", *, start: bool = True, **kwargs: Any) -> EmbeddedBroker:
        node = EmbeddedBroker("durable", tmp_path / name, **kwargs)
        made.append(node)
        if start:
            node.start()
        return node

    yield make
    errors = []
    for node in reversed(made):
        try:
            node.stop()
        except Exception as e:  # noqa: BLE001 - stop the others first
            errors.append(e)
    if errors:
        raise errors[0]
