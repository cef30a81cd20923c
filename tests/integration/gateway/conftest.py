"""Fixtures for the gateway tests: a fresh world (topics, keyring, tenant store) per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_harness import Env, env_for


@pytest.fixture
def env(broker, topic_prefix: str, tmp_path: Path) -> Env:
    return env_for(broker.bootstrap, topic_prefix, tmp_path)
