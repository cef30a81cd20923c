"""Fixtures for the SDK tests: a fake gateway on loopback and clients bound to it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from sdk_fake_gateway import API_KEY, FakeGateway, ServerThread  # noqa: E402
from tensafe import ServiceClient  # noqa: E402


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    yield FakeGateway()


@pytest.fixture
def server(gateway: FakeGateway) -> Iterator[ServerThread]:
    srv = ServerThread(gateway).start()
    yield srv
    srv.stop()


@pytest.fixture
def service(server: ServerThread) -> Iterator[ServiceClient]:
    with ServiceClient(server.url, API_KEY, timeout=10, backoff_base=0.01, backoff_max=0.05) as svc:
        yield svc


@pytest.fixture
async def aservice(server: ServerThread) -> AsyncIterator[ServiceClient]:
    async with ServiceClient(server.url, API_KEY, timeout=10, backoff_base=0.01, backoff_max=0.05) as svc:
        yield svc
