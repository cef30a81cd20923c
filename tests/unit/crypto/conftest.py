"""Fixtures for the crypto tests: keyrings with cheap Argon2 settings, artifact stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tensafe.crypto.artifacts import ArtifactStore
from tensafe.crypto.keyring import Keyring
from tensafe.crypto.storage import LocalDirBackend


@pytest.fixture()
def master_key() -> str:
    return os.urandom(32).hex()


@pytest.fixture()
def keyring(tmp_path: Path, master_key: str) -> Keyring:
    kr = Keyring.open_local(tmp_path / "keys", master_key=master_key)
    kr.create_tenant("acme")
    kr.create_tenant("globex")
    return kr


@pytest.fixture()
def events() -> list[tuple[str, dict]]:
    return []


@pytest.fixture()
def store(tmp_path: Path, keyring: Keyring, events: list[tuple[str, dict]]) -> ArtifactStore:
    return ArtifactStore(
        keyring,
        LocalDirBackend(tmp_path / "store"),
        on_event=lambda n, p: events.append((n, p)),
        chunk_size=256,
    )
