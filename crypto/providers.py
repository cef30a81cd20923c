"""KEK providers: where tenant key-encryption keys (KEKs) live.

A provider owns the per-tenant KEKs and never hands them out: callers ask it to
``wrap``/``unwrap`` data keys, exactly as with Vault Transit or a cloud KMS.
That keeps the ``Keyring`` identical whether KEKs sit in a local sealed file or
in an HSM.

* ``LocalKekProvider``: a keyring file sealed with AES-256-GCM under a key
  derived from a passphrase (Argon2id) or from a 32-byte master key
  (``TS_KEY_MASTER``, hex or base64). Written atomically (temp + fsync +
  rename + directory fsync) under an advisory ``flock``, so ``kill -9`` at any
  moment leaves either the old or the new file, never a torn one.
* ``VaultTransitKekProvider``: the adapter point for Vault Transit / cloud KMS;
  every method documents the call it maps to and raises NotImplementedError.

Keyring file layout (big-endian)::

    magic "TSKR" (4) | version 0x01 (1) | mode (1: 1 = Argon2id passphrase, 2 = master key)
    | salt (16) | argon2 time_cost (u32) | argon2 memory_cost KiB (u32) | argon2 lanes (u32)
    | nonce (12) | AES-256-GCM(JSON body) (AAD = all preceding 46 bytes)

    sealing key = Argon2id(passphrase, salt, t, m, p, 32)                      (mode 1)
                = HKDF-SHA256(master, salt, info="tensafe/keyring-file/v1")   (mode 2)

    body = {"format": 1, "tenants": {tenant_id: {"created_at": float,
            "current": int, "keks": {"<version>": base64(32 bytes)},
            "destroyed_at": float | null}}}

KEK wrapping: ``WK = HKDF-SHA256(KEK_v, info="tensafe/kek-wrap/v1" || lp(tenant) ||
u32 version || lp(context))`` then RFC 5649 AES-256-KWP(WK, DEK). KWP has no AAD,
so tenant, KEK version and the caller's context are bound by deriving a distinct
wrapping key; unwrapping under any other tenant/version/context fails.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from ._util import atomic_write, lp, lp_str
from .errors import (
    DecryptionError,
    KeyDestroyed,
    KeyNotFound,
    KeyringCorrupt,
    KeyringLocked,
)
from .files import exclusive_lock, file_signature

MASTER_KEY_ENV = "TS_KEY_MASTER"
KEK_LEN = 32

_MAGIC = b"TSKR"
_FILE_VERSION = 1
MODE_PASSPHRASE = 1
MODE_MASTER_KEY = 2
_FILE_HEADER = struct.Struct(">4sBB16sIII12s")  # 46 bytes
_WRAP_INFO = b"tensafe/kek-wrap/v1"
_FILE_INFO = b"tensafe/keyring-file/v1"


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost. Default = RFC 9106's second recommended option (t=3, 64 MiB, p=4)."""

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    lanes: int = 4


@dataclass(frozen=True)
class KekInfo:
    """Metadata about a tenant KEK; never contains key material."""

    tenant_id: str
    current_version: int
    versions: tuple[int, ...]
    created_at: float
    destroyed_at: float | None = None


@runtime_checkable
class KekProvider(Protocol):
    """Per-tenant KEK lifecycle + wrap/unwrap. Implementations must be thread-safe."""

    name: str

    def create(self, tenant_id: str) -> KekInfo:
        """Create the tenant's KEK (version 1); idempotent; KeyDestroyed if shredded."""
        ...

    def get(self, tenant_id: str) -> KekInfo:
        """KeyNotFound if unknown, KeyDestroyed if shredded."""
        ...

    def rotate(self, tenant_id: str) -> KekInfo:
        """Add a new KEK version and make it current; older versions still unwrap."""
        ...

    def retire(self, tenant_id: str, below_version: int) -> None:
        """Destroy KEK versions < below_version (after everything was re-wrapped)."""
        ...

    def destroy(self, tenant_id: str) -> None:
        """Irreversibly destroy all KEK versions (crypto-shredding); leaves a tombstone."""
        ...

    def wrap(self, tenant_id: str, version: int, key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, tenant_id: str, version: int, wrapped: bytes, context: bytes) -> bytes: ...


def parse_master_key(value: str | bytes) -> bytes:
    """Decode a 32-byte master key given as 64 hex chars or base64 (standard or URL-safe)."""
    if isinstance(value, bytes | bytearray):
        if len(value) == 32:
            return bytes(value)
        value = bytes(value).decode("ascii", "strict")
    s = value.strip()
    if len(s) == 64:
        try:
            return bytes.fromhex(s)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(s.replace("-", "+").replace("_", "/") + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{MASTER_KEY_ENV} must be 32 bytes as 64 hex chars or base64")
    return raw


def _derive_wrapping_key(kek: bytes, tenant_id: str, version: int, context: bytes) -> bytes:
    info = _WRAP_INFO + lp_str(tenant_id) + struct.pack(">I", version) + lp(context)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(kek)


class LocalKekProvider:
    """KEKs in a local sealed keyring file. See the module docstring for the format."""

    name = "local"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        master_key: str | bytes | None = None,
        argon2_params: Argon2Params | None = None,
    ) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.RLock()
        if passphrase is None and master_key is None and os.environ.get(MASTER_KEY_ENV):
            master_key = os.environ[MASTER_KEY_ENV]
        if passphrase is None and master_key is None:
            raise KeyringLocked(
                f"no unlock secret: pass a passphrase or master_key, or set {MASTER_KEY_ENV}",
                code="no_unlock_secret",
            )
        if passphrase is not None and master_key is not None:
            raise ValueError("give either passphrase or master_key, not both")
        self._passphrase = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        self._master = parse_master_key(master_key) if master_key is not None else None
        self._argon2 = argon2_params or Argon2Params()
        self._sealing: tuple[bytes, bytes] | None = None  # (header-without-nonce, key), cached
        self._stat: tuple[int, int, int] | None = None
        self._body: dict[str, Any] = {"format": 1, "tenants": {}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self.path.exists():
                self._load()
            else:
                self._new_sealing()
                self._save()

    # -- file handling -------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Thread mutex + inter-process flock around read-modify-write of the file."""
        with exclusive_lock(self._lock_path, self._mutex):
            yield

    def _new_sealing(self) -> None:
        salt = secrets.token_bytes(16)
        if self._master is not None:
            prefix = _FILE_HEADER.pack(_MAGIC, _FILE_VERSION, MODE_MASTER_KEY, salt, 0, 0, 0, b"")[:34]
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_FILE_INFO).derive(self._master)
        else:
            p = self._argon2
            prefix = _FILE_HEADER.pack(
                _MAGIC, _FILE_VERSION, MODE_PASSPHRASE, salt, p.time_cost, p.memory_cost_kib, p.lanes, b""
            )[:34]
            key = self._argon2_key(salt, p)
        self._sealing = (prefix, key)

    def _argon2_key(self, salt: bytes, p: Argon2Params) -> bytes:
        from ._util import require

        require("argon2")
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        assert self._passphrase is not None
        return Argon2id(
            salt=salt, length=32, iterations=p.time_cost, lanes=p.lanes, memory_cost=p.memory_cost_kib
        ).derive(self._passphrase)

    def _file_stat(self) -> tuple[int, int, int] | None:
        return file_signature(self.path)

    def _load(self) -> None:
        data = self.path.read_bytes()
        if len(data) < _FILE_HEADER.size + 16 or data[:4] != _MAGIC:
            raise KeyringCorrupt(f"{self.path} is not a TenSafe keyring file", code="keyring_corrupt")
        magic, version, mode, salt, t, m, lanes, nonce = _FILE_HEADER.unpack(data[: _FILE_HEADER.size])
        if version != _FILE_VERSION or mode not in (MODE_PASSPHRASE, MODE_MASTER_KEY):
            raise KeyringCorrupt(f"{self.path}: unsupported keyring version/mode", code="keyring_corrupt")
        prefix = data[:34]
        if self._sealing is None or self._sealing[0] != prefix:
            if mode == MODE_PASSPHRASE and self._passphrase is None:
                raise KeyringLocked(
                    "keyring file is sealed by a passphrase; a master key was given",
                    code="wrong_unlock_method",
                )
            if mode == MODE_MASTER_KEY and self._master is None:
                raise KeyringLocked(
                    "keyring file is sealed by a master key; a passphrase was given",
                    code="wrong_unlock_method",
                )
            if mode == MODE_MASTER_KEY:
                assert self._master is not None
                key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_FILE_INFO).derive(
                    self._master
                )
            else:
                key = self._argon2_key(salt, Argon2Params(t, m, lanes))
        else:
            key = self._sealing[1]
        try:
            plain = AESGCM(key).decrypt(nonce, data[_FILE_HEADER.size :], data[: _FILE_HEADER.size])
        except InvalidTag:
            raise KeyringLocked(
                f"cannot unlock {self.path}: wrong passphrase/master key, or the file was altered",
                code="bad_passphrase",
            ) from None
        try:
            body = json.loads(plain)
            assert body.get("format") == 1 and isinstance(body.get("tenants"), dict)
        except (ValueError, AssertionError):
            raise KeyringCorrupt(f"{self.path}: keyring body is damaged", code="keyring_corrupt") from None
        self._sealing = (prefix, key)
        self._body = body
        self._stat = self._file_stat()

    def _save(self) -> None:
        assert self._sealing is not None
        prefix, key = self._sealing
        nonce = secrets.token_bytes(12)
        header = prefix + nonce
        blob = header + AESGCM(key).encrypt(nonce, json.dumps(self._body).encode(), header)
        atomic_write(self.path, blob)
        self._stat = self._file_stat()

    def _refresh(self) -> None:
        """Pick up changes another process committed (cheap: one stat when unchanged)."""
        if self._file_stat() != self._stat:
            self._load()

    # -- tenant records ------------------------------------------------------

    def _record(self, tenant_id: str) -> dict[str, Any]:
        rec = self._body["tenants"].get(tenant_id)
        if rec is None:
            raise KeyNotFound(f"tenant {tenant_id!r} has no KEK", code="tenant_unknown")
        if rec.get("destroyed_at") is not None:
            raise KeyDestroyed(f"tenant {tenant_id!r} was crypto-shredded", code="tenant_shredded")
        return rec

    @staticmethod
    def _info(tenant_id: str, rec: dict[str, Any]) -> KekInfo:
        return KekInfo(
            tenant_id=tenant_id,
            current_version=int(rec["current"]),
            versions=tuple(sorted(int(v) for v in rec["keks"])),
            created_at=float(rec["created_at"]),
            destroyed_at=rec.get("destroyed_at"),
        )

    def create(self, tenant_id: str) -> KekInfo:
        with self._locked():
            self._refresh()
            rec = self._body["tenants"].get(tenant_id)
            if rec is None:
                rec = {
                    "created_at": time.time(),
                    "current": 1,
                    "keks": {"1": base64.b64encode(secrets.token_bytes(KEK_LEN)).decode()},
                    "destroyed_at": None,
                }
                self._body["tenants"][tenant_id] = rec
                self._save()
            return self._info(tenant_id, self._record(tenant_id))

    def get(self, tenant_id: str) -> KekInfo:
        with self._mutex:
            self._refresh()
            return self._info(tenant_id, self._record(tenant_id))

    def rotate(self, tenant_id: str) -> KekInfo:
        with self._locked():
            self._refresh()
            rec = self._record(tenant_id)
            new = max(int(v) for v in rec["keks"]) + 1 if rec["keks"] else int(rec["current"]) + 1
            rec["keks"][str(new)] = base64.b64encode(secrets.token_bytes(KEK_LEN)).decode()
            rec["current"] = new
            self._save()
            return self._info(tenant_id, rec)

    def retire(self, tenant_id: str, below_version: int) -> None:
        with self._locked():
            self._refresh()
            rec = self._record(tenant_id)
            if below_version > int(rec["current"]):
                raise ValueError("cannot retire the current KEK version")
            old = [v for v in rec["keks"] if int(v) < below_version]
            for v in old:
                del rec["keks"][v]
            if old:
                self._save()

    def destroy(self, tenant_id: str) -> None:
        with self._locked():
            self._refresh()
            rec = self._body["tenants"].get(tenant_id)
            if rec is None:
                raise KeyNotFound(f"tenant {tenant_id!r} has no KEK", code="tenant_unknown")
            if rec.get("destroyed_at") is not None:
                return  # idempotent: finishing an interrupted shred must not fail
            rec["keks"] = {}
            rec["destroyed_at"] = time.time()
            self._save()

    def tenants(self) -> list[str]:
        with self._mutex:
            self._refresh()
            return sorted(self._body["tenants"])

    def _kek(self, tenant_id: str, version: int) -> bytes:
        rec = self._record(tenant_id)
        b64 = rec["keks"].get(str(version))
        if b64 is None:
            raise KeyNotFound(
                f"tenant {tenant_id!r} has no KEK version {version} (retired or never created)",
                code="kek_version_unknown",
            )
        return base64.b64decode(b64)

    def wrap(self, tenant_id: str, version: int, key: bytes, context: bytes) -> bytes:
        with self._mutex:
            self._refresh()
            kek = self._kek(tenant_id, version)
        return aes_key_wrap_with_padding(_derive_wrapping_key(kek, tenant_id, version, context), bytes(key))

    def unwrap(self, tenant_id: str, version: int, wrapped: bytes, context: bytes) -> bytes:
        with self._mutex:
            self._refresh()
            kek = self._kek(tenant_id, version)
        try:
            return aes_key_unwrap_with_padding(
                _derive_wrapping_key(kek, tenant_id, version, context), bytes(wrapped)
            )
        except InvalidUnwrap:
            raise DecryptionError(
                f"wrapped key does not unwrap under tenant {tenant_id!r} KEK v{version} "
                "(wrong tenant, version or context, or tampered)",
                code="wrong_key",
            ) from None

    def rekey(self, *, passphrase: str | bytes | None = None, master_key: str | bytes | None = None) -> None:
        """Re-seal the file under a new passphrase or master key (KEKs unchanged)."""
        if (passphrase is None) == (master_key is None):
            raise ValueError("give exactly one of passphrase or master_key")
        with self._locked():
            self._refresh()
            self._passphrase = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
            self._master = parse_master_key(master_key) if master_key is not None else None
            self._new_sealing()
            self._save()


class VaultTransitKekProvider:
    """Adapter point for HashiCorp Vault Transit (and, by analogy, AWS/GCP KMS).

    Not implemented in this build: every method raises NotImplementedError. To
    implement, use one Transit key per tenant, named ``{key_prefix}{tenant_id}``,
    of type ``aes256-gcm96`` with ``derived=true`` (so ``context`` is bound), and
    map the calls as follows:

    * ``create``  -> ``POST {mount}/keys/{name}`` (type aes256-gcm96, derived=true,
      exportable=false). AWS KMS: ``CreateKey`` + ``CreateAlias``.
    * ``get``     -> ``GET {mount}/keys/{name}`` (``latest_version``,
      ``min_decryption_version``, ``keys``). KMS: ``DescribeKey``.
    * ``rotate``  -> ``POST {mount}/keys/{name}/rotate``. KMS: ``RotateKeyOnDemand``.
    * ``retire``  -> ``POST {mount}/keys/{name}/config`` with
      ``min_decryption_version=below_version`` then ``POST {mount}/keys/{name}/trim``
      (``min_available_version``). KMS: no per-version delete (rotation is
      re-encrypt + ScheduleKeyDeletion of an old key).
    * ``destroy`` -> ``POST {mount}/keys/{name}/config`` (deletion_allowed=true) then
      ``DELETE {mount}/keys/{name}``. KMS: ``ScheduleKeyDeletion`` (7-30 day window:
      document it as the shredding latency).
    * ``wrap``    -> ``POST {mount}/encrypt/{name}`` with ``plaintext=b64(key)``,
      ``context=b64(context)``, ``key_version=version``; returns ``vault:vN:...``.
      KMS: ``Encrypt`` with ``EncryptionContext={"ctx": b64(context)}``.
    * ``unwrap``  -> ``POST {mount}/decrypt/{name}`` with ``ciphertext`` and ``context``.
      KMS: ``Decrypt`` with the same EncryptionContext.

    Vault's 400 "unable to decrypt" maps to ``DecryptionError(code="wrong_key")``,
    404 on the key to ``KeyNotFound``; a deleted key is indistinguishable from an
    unknown one, so keep a local tombstone to raise ``KeyDestroyed``.
    """

    name = "vault-transit"

    def __init__(self, url: str, token: str, *, mount: str = "transit", key_prefix: str = "tensafe-") -> None:
        self.url = url.rstrip("/")
        self.mount = mount
        self.key_prefix = key_prefix
        self._token = token

    def _todo(self, call: str) -> NotImplementedError:
        return NotImplementedError(
            f"VaultTransitKekProvider.{call} is an adapter point, not implemented in this build; "
            "see the class docstring for the Vault Transit / KMS call it maps to, or use LocalKekProvider"
        )

    def create(self, tenant_id: str) -> KekInfo:
        raise self._todo("create")

    def get(self, tenant_id: str) -> KekInfo:
        raise self._todo("get")

    def rotate(self, tenant_id: str) -> KekInfo:
        raise self._todo("rotate")

    def retire(self, tenant_id: str, below_version: int) -> None:
        raise self._todo("retire")

    def destroy(self, tenant_id: str) -> None:
        raise self._todo("destroy")

    def wrap(self, tenant_id: str, version: int, key: bytes, context: bytes) -> bytes:
        raise self._todo("wrap")

    def unwrap(self, tenant_id: str, version: int, wrapped: bytes, context: bytes) -> bytes:
        raise self._todo("unwrap")


__all__ = [
    "MASTER_KEY_ENV",
    "Argon2Params",
    "KekInfo",
    "KekProvider",
    "LocalKekProvider",
    "VaultTransitKekProvider",
    "parse_master_key",
]
