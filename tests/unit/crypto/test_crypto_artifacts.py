from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensafe.crypto import aead
from tensafe.crypto.artifacts import ArtifactStore, tenant_dir
from tensafe.crypto.errors import (
    ArtifactNotFound,
    DecryptionError,
    IntegrityError,
    TenantMismatch,
)


def _path(store: ArtifactStore, tenant: str, artifact_id: str, ext: str = ".bin") -> Path:
    return store.backend.root / tenant_dir(tenant) / f"{artifact_id}{ext}"  # type: ignore[attr-defined]


def test_put_get_bytes(store: ArtifactStore, events: list) -> None:
    data = os.urandom(1000)
    ref = store.put("acme", "checkpoint", data, {"step": 7, "run": "r1"})
    assert ref.tenant_id == "acme" and ref.kind == "checkpoint" and ref.size == 1000
    assert ref.content_sha256 == hashlib.sha256(data).hexdigest()
    stored = _path(store, "acme", ref.artifact_id).read_bytes()
    assert ref.ciphertext_sha256 == hashlib.sha256(stored).hexdigest() and ref.ciphertext_size == len(stored)
    assert data not in stored
    assert store.get("acme", ref.artifact_id) == data
    assert store.info("acme", ref.artifact_id) == ref
    assert events == [("ArtifactPut", ref.to_event())]
    assert events[0][1]["metadata"] == {"step": 7, "run": "r1"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_stream_roundtrip_any_size(store: ArtifactStore, data: bytes) -> None:
    ref = store.put("acme", "dataset", io.BytesIO(data))
    assert ref.size == len(data) and ref.content_sha256 == hashlib.sha256(data).hexdigest()
    assert store.get("acme", ref.artifact_id) == data
    out = io.BytesIO()
    assert store.get_to("acme", ref.artifact_id, out) == ref
    assert out.getvalue() == data


def test_list_and_delete(store: ArtifactStore, events: list) -> None:
    a = store.put("acme", "checkpoint", b"a")
    b = store.put("acme", "adapter", b"b")
    g = store.put("globex", "checkpoint", b"g")
    assert [r.artifact_id for r in store.list("acme")] == [a.artifact_id, b.artifact_id]
    assert [r.artifact_id for r in store.list("globex")] == [g.artifact_id]
    assert store.delete("acme", a.artifact_id) is True
    assert store.delete("acme", a.artifact_id) is False
    with pytest.raises(ArtifactNotFound):
        store.get("acme", a.artifact_id)
    assert [r.artifact_id for r in store.list("acme")] == [b.artifact_id]
    assert ("ArtifactDeleted", {"tenant_id": "acme", "artifact_id": a.artifact_id}) in events


def test_other_tenants_artifact_refused(store: ArtifactStore) -> None:
    ref = store.put("acme", "checkpoint", b"secret")
    for call in (store.get, store.info, store.delete):
        with pytest.raises(TenantMismatch) as e:
            call("globex", ref.artifact_id)
        assert e.value.code == "tenant_mismatch"
    assert store.get("acme", ref.artifact_id) == b"secret"  # delete above was refused


def test_storage_level_splice_across_tenants(store: ArtifactStore) -> None:
    """An insider copies acme's objects into globex's directory under a globex-looking id:
    globex's keys never open them (different DEK, tenant in AAD and header)."""
    ref = store.put("acme", "checkpoint", b"acme secret")
    fake_id = store.new_artifact_id("globex")
    gdir = store.backend.root / tenant_dir("globex")  # type: ignore[attr-defined]
    gdir.mkdir(parents=True, exist_ok=True)
    for ext in (".bin", ".meta"):
        shutil.copy(_path(store, "acme", ref.artifact_id, ext), gdir / f"{fake_id}{ext}")
    with pytest.raises((TenantMismatch, DecryptionError)):
        store.get("globex", fake_id)


def test_invalid_and_missing_ids(store: ArtifactStore) -> None:
    for bad in ("../../etc/passwd", "art_zz", ""):
        with pytest.raises(ArtifactNotFound):
            store.get("acme", bad)
    with pytest.raises(ArtifactNotFound):
        store.get("acme", store.new_artifact_id("acme"))
    ref = store.put("acme", "checkpoint", b"x")
    _path(store, "acme", ref.artifact_id).unlink()
    with pytest.raises(ArtifactNotFound):
        store.get("acme", ref.artifact_id)


def test_flipped_ciphertext_byte(store: ArtifactStore, events: list) -> None:
    ref = store.put("acme", "checkpoint", os.urandom(2000))
    p = _path(store, "acme", ref.artifact_id)
    raw = bytearray(p.read_bytes())
    raw[-100] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(DecryptionError):
        store.get("acme", ref.artifact_id)
    with pytest.raises(DecryptionError):
        store.get_to("acme", ref.artifact_id, io.BytesIO())
    assert events[-1][0] == "ArtifactIntegrityFailure" and events[-1][1]["reason"] == "auth_failed"


def test_truncated_object(store: ArtifactStore) -> None:
    ref = store.put("acme", "checkpoint", os.urandom(2000))
    p = _path(store, "acme", ref.artifact_id)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - 272])  # drop the last full chunk (256 + 16)
    with pytest.raises(DecryptionError):
        store.get("acme", ref.artifact_id)
    with pytest.raises(DecryptionError):
        store.get_to("acme", ref.artifact_id, io.BytesIO())


def test_content_hash_checked_on_every_read(store: ArtifactStore, events: list) -> None:
    """Rollback by someone holding the DEK: a validly encrypted *different* plaintext under
    the same artifact id decrypts fine but fails the recorded content hash."""
    ref = store.put("acme", "checkpoint", b"version 2 weights")
    dek = store.keyring.dek("acme", ref.dek_id)
    p = _path(store, "acme", ref.artifact_id)
    raw = p.read_bytes()
    n = 5
    for _ in range(3):
        (ln,) = struct.unpack_from(">I", raw, n)
        n += 4 + ln
    p.write_bytes(raw[:n] + aead.seal(dek, b"version 1 weights", "acme", ref.artifact_id, chunk_size=256))
    for read in (
        lambda: store.get("acme", ref.artifact_id),
        lambda: store.get_to("acme", ref.artifact_id, io.BytesIO()),
    ):
        with pytest.raises(IntegrityError) as e:
            read()
        assert e.value.code == "content_hash_mismatch"
    assert events[-1] == (
        "ArtifactIntegrityFailure",
        {"tenant_id": "acme", "artifact_id": ref.artifact_id, "reason": "content_hash_mismatch"},
    )


def test_swapped_objects_within_tenant(store: ArtifactStore) -> None:
    a = store.put("acme", "checkpoint", b"aaaa")
    b = store.put("acme", "checkpoint", b"bbbb")
    shutil.copy(_path(store, "acme", b.artifact_id), _path(store, "acme", a.artifact_id))
    with pytest.raises(IntegrityError) as e:
        store.get("acme", a.artifact_id)
    assert e.value.code == "header_mismatch"
    shutil.copy(_path(store, "acme", b.artifact_id, ".meta"), _path(store, "acme", a.artifact_id, ".meta"))
    with pytest.raises(DecryptionError):  # metadata is bound to its artifact id
        store.info("acme", a.artifact_id)


def test_metadata_and_hash_are_not_in_clear(store: ArtifactStore) -> None:
    ref = store.put("acme", "checkpoint", b"guessable", {"label": "confidential-run"})
    meta = _path(store, "acme", ref.artifact_id, ".meta").read_bytes()
    assert b"confidential-run" not in meta and ref.content_sha256.encode() not in meta
    assert b"acme" not in str(_path(store, "acme", ref.artifact_id)).encode()


def test_non_json_metadata_rejected_before_writing(store: ArtifactStore) -> None:
    with pytest.raises(TypeError):
        store.put("acme", "checkpoint", b"x", {"bad": object()})
    assert store.list("acme") == []


def test_hook_failure_propagates_after_commit(store: ArtifactStore) -> None:
    def boom(name: str, payload: dict) -> None:
        raise RuntimeError("ledger down")

    store.on_event = boom
    with pytest.raises(RuntimeError):
        store.put("acme", "checkpoint", b"x")
    store.on_event = None
    assert len(store.list("acme")) == 1  # stored; the caller decides what to do
