from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensafe.crypto.artifacts import ArtifactStore, tenant_dir
from tensafe.crypto.errors import (
    DecryptionError,
    KeyDestroyed,
    KeyNotFound,
    KeyringCorrupt,
    KeyringLocked,
    TenantMismatch,
)
from tensafe.crypto.fields import open_field, seal_field
from tensafe.crypto.keyring import Keyring
from tensafe.crypto.providers import Argon2Params, LocalKekProvider, VaultTransitKekProvider, parse_master_key

FAST_ARGON2 = Argon2Params(time_cost=1, memory_cost_kib=1024, lanes=1)  # tests need the path, not the cost

# -- unlocking and persistence ---------------------------------------------------


def test_passphrase_required_and_checked(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    kr = Keyring.open_local(d, passphrase="correct horse", argon2_params=FAST_ARGON2)
    kr.create_tenant("acme")
    dek_id, dek = kr.data_key("acme", "ledger-fields")
    del kr

    with pytest.raises(KeyringLocked) as e:
        Keyring.open_local(d, passphrase="wrong horse")
    assert e.value.code == "bad_passphrase"
    env = {k: v for k, v in os.environ.items() if k != "TS_KEY_MASTER"}
    old = os.environ.copy()
    try:
        os.environ.clear()
        os.environ.update(env)
        with pytest.raises(KeyringLocked) as e:
            Keyring.open_local(d)
        assert e.value.code == "no_unlock_secret"
    finally:
        os.environ.clear()
        os.environ.update(old)
    with pytest.raises(KeyringLocked) as e:
        Keyring.open_local(d, master_key=os.urandom(32))
    assert e.value.code == "wrong_unlock_method"

    again = Keyring.open_local(d, passphrase="correct horse")  # params come from the file
    assert again.data_key("acme", "ledger-fields") == (dek_id, dek)
    assert again.dek("acme", dek_id) == dek


def test_keyring_file_is_sealed(tmp_path: Path) -> None:
    kr = Keyring.open_local(tmp_path / "k", passphrase="pw", argon2_params=FAST_ARGON2)
    kr.create_tenant("acme-corp")
    raw = (tmp_path / "k" / "keks.sealed").read_bytes()
    assert raw[:4] == b"TSKR"
    assert b"acme-corp" not in raw and b"keks" not in raw
    assert (os.stat(tmp_path / "k" / "keks.sealed").st_mode & 0o777) == 0o600
    tampered = bytearray(raw)
    tampered[-5] ^= 1
    (tmp_path / "k" / "keks.sealed").write_bytes(bytes(tampered))
    with pytest.raises(KeyringLocked):
        Keyring.open_local(tmp_path / "k", passphrase="pw")
    (tmp_path / "k" / "keks.sealed").write_bytes(b"not a keyring")
    with pytest.raises(KeyringCorrupt):
        Keyring.open_local(tmp_path / "k", passphrase="pw")


def test_master_key_from_env_hex_and_base64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("TS_KEY_MASTER", raw.hex())
    kr = Keyring.open_local(tmp_path / "k")
    kr.create_tenant("acme")
    pair = kr.data_key("acme", "p")
    monkeypatch.setenv("TS_KEY_MASTER", base64.b64encode(raw).decode())
    assert Keyring.open_local(tmp_path / "k").data_key("acme", "p") == pair
    monkeypatch.setenv("TS_KEY_MASTER", base64.urlsafe_b64encode(raw).decode().rstrip("="))
    assert Keyring.open_local(tmp_path / "k").data_key("acme", "p") == pair
    monkeypatch.setenv("TS_KEY_MASTER", os.urandom(32).hex())
    with pytest.raises(KeyringLocked):
        Keyring.open_local(tmp_path / "k")
    for bad in ("abcd", base64.b64encode(os.urandom(16)).decode(), "zz" * 32):
        with pytest.raises(ValueError):
            parse_master_key(bad)


def test_rekey(tmp_path: Path) -> None:
    kr = Keyring.open_local(tmp_path / "k", passphrase="old", argon2_params=FAST_ARGON2)
    kr.create_tenant("acme")
    pair = kr.data_key("acme", "p")
    assert isinstance(kr.provider, LocalKekProvider)
    kr.provider.rekey(passphrase="new")
    with pytest.raises(KeyringLocked):
        Keyring.open_local(tmp_path / "k", passphrase="old")
    assert Keyring.open_local(tmp_path / "k", passphrase="new").data_key("acme", "p") == pair


# -- DEKs and tenant isolation ------------------------------------------------------


def test_data_key_stable_per_purpose(keyring: Keyring) -> None:
    a = keyring.data_key("acme", "artifacts")
    assert keyring.data_key("acme", "artifacts") == a
    b = keyring.data_key("acme", "ledger-fields")
    assert b[0] != a[0] and b[1] != a[1] and len(a[1]) == 32
    assert keyring.data_key("globex", "artifacts")[1] != a[1]
    infos = keyring.list_deks("acme")
    assert {i.dek_id for i in infos} == {a[0], b[0]} and all(i.current for i in infos)
    assert {i.purpose for i in infos} == {"artifacts", "ledger-fields"}


def test_dek_of_another_tenant_refused(keyring: Keyring) -> None:
    dek_id, _ = keyring.data_key("acme", "artifacts")
    with pytest.raises(TenantMismatch) as e:
        keyring.dek("globex", dek_id)
    assert e.value.code == "tenant_mismatch"
    with pytest.raises(KeyNotFound) as e:
        keyring.dek("acme", "dek_000000000000000000000000")
    assert e.value.code == "dek_unknown"
    with pytest.raises(KeyNotFound) as e:
        keyring.data_key("nobody", "artifacts")
    assert e.value.code == "tenant_unknown"


def test_wrapped_dek_moved_to_other_tenant_does_not_unwrap(tmp_path: Path, master_key: str) -> None:
    """Even with write access to the records file, a wrapped DEK copied into another
    tenant's record does not unwrap: tenant, KEK version, DEK id and purpose are bound."""
    kr = Keyring.open_local(tmp_path / "k", master_key=master_key, cache_ttl=0)
    kr.create_tenant("acme")
    kr.create_tenant("globex")
    a_id, _ = kr.data_key("acme", "artifacts")
    g_id, _ = kr.data_key("globex", "artifacts")
    path = tmp_path / "k" / "deks.json"
    body = json.loads(path.read_text())
    body["tenants"]["globex"]["deks"][g_id]["wrapped"] = body["tenants"]["acme"]["deks"][a_id]["wrapped"]
    path.write_text(json.dumps(body))
    fresh = Keyring.open_local(tmp_path / "k", master_key=master_key, cache_ttl=0)
    with pytest.raises(DecryptionError) as e:
        fresh.dek("globex", g_id)
    assert e.value.code == "wrong_key"


def test_rotate_dek(keyring: Keyring) -> None:
    old_id, old = keyring.data_key("acme", "ledger-fields")
    blob = seal_field(old, "acme", "prompt", b"hi")
    new_id, new = keyring.rotate_dek("acme", "ledger-fields")
    assert new_id != old_id and keyring.data_key("acme", "ledger-fields") == (new_id, new)
    assert open_field(keyring.dek("acme", old_id), "acme", "prompt", blob) == b"hi"
    assert [i.current for i in keyring.list_deks("acme")] == [False, True]


# -- rotation and shredding ------------------------------------------------------------


def test_rotation_keeps_everything_readable(tmp_path: Path, store: ArtifactStore, master_key: str) -> None:
    kr = store.keyring
    refs = [store.put("acme", "checkpoint", os.urandom(n), {"step": n}) for n in (0, 100, 1000)]
    fid, fdek = kr.data_key("acme", "ledger-fields")
    field = seal_field(fdek, "acme", "prompt", b"my prompt")
    provider = kr.provider
    assert provider.get("acme").current_version == 1
    for expected in (2, 3):
        assert kr.rotate_kek("acme") == expected
        info = provider.get("acme")
        assert info.current_version == expected and info.versions == (expected,)  # old KEKs retired
        assert all(d.kek_version == expected for d in kr.list_deks("acme"))
    # A fresh process (no DEK cache) reads everything back.
    fresh = Keyring.open_local(tmp_path / "keys", master_key=master_key)
    fresh_store = ArtifactStore(fresh, store.backend)
    for ref in refs:
        assert len(fresh_store.get("acme", ref.artifact_id)) == ref.size
    assert open_field(fresh.dek("acme", fid), "acme", "prompt", field) == b"my prompt"
    # Old KEK versions are gone for good: a wrapped DEK from before rotation no longer opens.
    with pytest.raises(KeyNotFound) as e:
        provider.unwrap("acme", 1, b"\x00" * 40, b"ctx")
    assert e.value.code == "kek_version_unknown"


def test_shred_makes_tenant_unreadable_and_spares_others(
    tmp_path: Path, store: ArtifactStore, master_key: str
) -> None:
    kr = store.keyring
    a_ref = store.put("acme", "checkpoint", b"acme weights")
    g_ref = store.put("globex", "checkpoint", b"globex weights")
    a_fid, a_fdek = kr.data_key("acme", "ledger-fields")
    g_fid, g_fdek = kr.data_key("globex", "ledger-fields")
    a_field = seal_field(a_fdek, "acme", "prompt", b"acme prompt")
    g_field = seal_field(g_fdek, "globex", "prompt", b"globex prompt")

    kr.shred_tenant("acme")

    for call in (
        lambda: store.get("acme", a_ref.artifact_id),
        lambda: store.list("acme"),
        lambda: kr.dek("acme", a_fid),
        lambda: kr.data_key("acme", "ledger-fields"),
        lambda: kr.list_deks("acme"),
        lambda: kr.rotate_kek("acme"),
        lambda: kr.create_tenant("acme"),
    ):
        with pytest.raises(KeyDestroyed) as e:
            call()
        assert e.value.code == "tenant_shredded"
    assert not kr.has_tenant("acme") and kr.tenants() == ["globex"]
    kr.shred_tenant("acme")  # idempotent

    # A fresh process sees the same, and the key material is gone from both files.
    fresh = Keyring.open_local(tmp_path / "keys", master_key=master_key)
    with pytest.raises(KeyDestroyed):
        fresh.dek("acme", a_fid)
    assert "acme" in (tmp_path / "keys" / "deks.json").read_text()  # tombstone only
    assert json.loads((tmp_path / "keys" / "deks.json").read_text())["tenants"]["acme"]["deks"] == {}

    # The other tenant is untouched.
    fresh_store = ArtifactStore(fresh, store.backend)
    assert fresh_store.get("globex", g_ref.artifact_id) == b"globex weights"
    assert open_field(fresh.dek("globex", g_fid), "globex", "prompt", g_field) == b"globex prompt"
    # Even someone who kept the acme DEK id cannot get a key for the old blob.
    with pytest.raises(KeyDestroyed):
        fresh.dek("acme", a_fid)
    assert a_field  # (the ciphertext still exists; nothing can open it)
    assert store.purge_tenant("acme") == 2
    assert store.backend.list(tenant_dir("acme") + "/") == []
    assert len(store.backend.list(tenant_dir("globex") + "/")) == 2


def test_shred_seen_by_other_process_cache(tmp_path: Path, master_key: str) -> None:
    """A second Keyring instance (another process) with a warm DEK cache sees the shred."""
    a = Keyring.open_local(tmp_path / "k", master_key=master_key)
    a.create_tenant("acme")
    dek_id, _ = a.data_key("acme", "p")
    b = Keyring.open_local(tmp_path / "k", master_key=master_key)
    b.dek("acme", dek_id)  # warm b's cache
    time.sleep(0.01)  # distinct mtime_ns even on coarse clocks
    a.shred_tenant("acme")
    with pytest.raises(KeyDestroyed):
        b.dek("acme", dek_id)


def test_unknown_tenant_shred(keyring: Keyring) -> None:
    with pytest.raises(KeyNotFound):
        keyring.shred_tenant("nobody")


def test_vault_adapter_is_an_explicit_adapter_point() -> None:
    v = VaultTransitKekProvider("http://vault:8200", "token")
    with pytest.raises(NotImplementedError, match="adapter point"):
        v.wrap("acme", 1, b"k" * 32, b"ctx")


# -- crash safety ------------------------------------------------------------------------

_HAMMER = r"""
import sys
from tensafe.crypto.keyring import Keyring
kr = Keyring.open_local(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    kr.rotate_kek("acme")
    kr.rotate_dek("acme", "p%d" % (i % 3))
    i += 1
"""


def test_kill_9_never_corrupts_keyring(tmp_path: Path, master_key: str) -> None:
    d = tmp_path / "k"
    kr = Keyring.open_local(d, master_key=master_key)
    kr.create_tenant("acme")
    dek_id, dek = kr.data_key("acme", "artifacts")
    env = {**os.environ, "TS_KEY_MASTER": master_key}
    last_version = 1
    for delay in (0.15, 0.3, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", _HAMMER, str(d)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fresh = Keyring.open_local(d, master_key=master_key, cache_ttl=0)
        assert fresh.dek("acme", dek_id) == dek
        for info in fresh.list_deks("acme"):  # every recorded DEK still unwraps
            assert len(fresh.dek("acme", info.dek_id)) == 32
        version = fresh.provider.get("acme").current_version
        assert version > last_version  # the writer really was mid-flight when killed
        last_version = version
    # Leftover temp files from killed writers are harmless and ignored.
    assert (d / "keks.sealed").exists() and (d / "deks.json").exists()
