"""Per-tenant key hierarchy: KEK (in a provider) -> wrapped DEKs (in a records file).

* Each tenant has a KEK held by a ``KekProvider`` (local sealed file, or
  Vault/KMS via the adapter point). KEKs never leave the provider.
* Data keys (DEKs, 32 random bytes, AES-256) are generated here, one current
  DEK per ``purpose`` (e.g. ``"artifacts"``, ``"ledger-fields"``), and stored
  only wrapped: ``provider.wrap(tenant, kek_version, dek, context)`` with
  ``context = "tensafe/dek/v1" || lp(tenant) || lp(dek_id) || lp(purpose)``.
  The local provider implements that as AES-256-KWP under
  HKDF(KEK_v, tenant | version | context), so a wrapped DEK opens only under
  its own tenant, KEK version, id and purpose.
* ``rotate_kek`` adds a KEK version, re-wraps every DEK under it and then
  retires the old versions: no data is re-encrypted, everything stays readable.
* ``shred_tenant`` destroys the KEK in the provider first (the irreversible
  step) and then deletes the wrapped DEKs, leaving a tombstone: afterwards every
  call for that tenant raises ``KeyDestroyed`` and all of its ciphertext
  (artifacts, sealed fields) is unreadable.

Records file (``deks.json``; holds only wrapped keys, written atomically under
an advisory flock)::

    {"format": 1, "tenants": {tenant_id: {"shredded_at": float|null,
      "current": {purpose: dek_id},
      "deks": {dek_id: {"purpose": str, "kek_version": int,
                        "wrapped": base64, "created_at": float}}}}}
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._util import atomic_write, lp_str
from .errors import KeyDestroyed, KeyNotFound, KeyringCorrupt, TenantMismatch
from .files import exclusive_lock, file_signature
from .providers import Argon2Params, KekProvider, LocalKekProvider

DEK_LEN = 32
_DEK_CONTEXT = b"tensafe/dek/v1"


@dataclass(frozen=True)
class DekInfo:
    dek_id: str
    tenant_id: str
    purpose: str
    kek_version: int
    created_at: float
    current: bool


def _context(tenant_id: str, dek_id: str, purpose: str) -> bytes:
    return _DEK_CONTEXT + lp_str(tenant_id) + lp_str(dek_id) + lp_str(purpose)


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError(f"{kind} must be a non-empty string of at most 256 characters")


class Keyring:
    """Thread-safe; several processes may share the same files (flock + reload on change)."""

    def __init__(
        self,
        provider: KekProvider,
        records_path: str | os.PathLike[str],
        *,
        cache_ttl: float = 300.0,
    ) -> None:
        self.provider = provider
        self.records_path = Path(records_path)
        self._lock_path = self.records_path.with_name(self.records_path.name + ".lock")
        self._mutex = threading.RLock()
        self._cache_ttl = cache_ttl
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._stat: tuple[int, int, int] | None = None
        self._body: dict[str, Any] = {"format": 1, "tenants": {}}
        self._owner: dict[str, str] = {}  # dek_id -> tenant_id
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self.records_path.exists():
                self._load()
            else:
                self._save()

    @classmethod
    def open_local(
        cls,
        directory: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        master_key: str | bytes | None = None,
        argon2_params: Argon2Params | None = None,
        cache_ttl: float = 300.0,
    ) -> Keyring:
        """``directory/keks.sealed`` (LocalKekProvider) + ``directory/deks.json``.

        Without passphrase/master_key the master key is read from ``TS_KEY_MASTER``.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        provider = LocalKekProvider(
            d / "keks.sealed", passphrase=passphrase, master_key=master_key, argon2_params=argon2_params
        )
        return cls(provider, d / "deks.json", cache_ttl=cache_ttl)

    # -- persistence ---------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with exclusive_lock(self._lock_path, self._mutex):
            yield

    def _file_stat(self) -> tuple[int, int, int] | None:
        return file_signature(self.records_path)

    def _load(self) -> None:
        try:
            body = json.loads(self.records_path.read_bytes())
            assert body.get("format") == 1 and isinstance(body.get("tenants"), dict)
        except (ValueError, AssertionError):
            raise KeyringCorrupt(
                f"{self.records_path}: DEK records are damaged", code="keyring_corrupt"
            ) from None
        self._body = body
        self._owner = {d: t for t, rec in body["tenants"].items() for d in rec.get("deks", {})}
        self._stat = self._file_stat()

    def _save(self) -> None:
        atomic_write(self.records_path, json.dumps(self._body, sort_keys=True).encode())
        self._stat = self._file_stat()

    def _refresh(self) -> None:
        if self._file_stat() != self._stat:
            self._load()

    # -- helpers ---------------------------------------------------------------

    def _tenant(self, tenant_id: str) -> dict[str, Any]:
        """Tenant record; raises KeyNotFound / KeyDestroyed. Caller holds the mutex."""
        rec = self._body["tenants"].get(tenant_id)
        if rec is not None and rec.get("shredded_at") is not None:
            raise KeyDestroyed(f"tenant {tenant_id!r} was crypto-shredded", code="tenant_shredded")
        self.provider.get(tenant_id)  # KeyDestroyed if the KEK is gone (e.g. interrupted shred)
        if rec is None:
            raise KeyNotFound(f"tenant {tenant_id!r} has no keyring entry", code="tenant_unknown")
        return rec

    def _unwrap(self, tenant_id: str, dek_id: str, d: dict[str, Any]) -> bytes:
        return self.provider.unwrap(
            tenant_id,
            int(d["kek_version"]),
            base64.b64decode(d["wrapped"]),
            _context(tenant_id, dek_id, d["purpose"]),
        )

    def _cached(self, tenant_id: str, dek_id: str) -> bytes | None:
        hit = self._cache.get((tenant_id, dek_id))
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def _remember(self, tenant_id: str, dek_id: str, dek: bytes) -> None:
        self._cache[(tenant_id, dek_id)] = (dek, time.monotonic() + self._cache_ttl)

    def _new_dek(self, tenant_id: str, rec: dict[str, Any], purpose: str) -> tuple[str, bytes]:
        dek_id = "dek_" + secrets.token_hex(12)
        dek = secrets.token_bytes(DEK_LEN)
        version = self.provider.get(tenant_id).current_version
        wrapped = self.provider.wrap(tenant_id, version, dek, _context(tenant_id, dek_id, purpose))
        rec["deks"][dek_id] = {
            "purpose": purpose,
            "kek_version": version,
            "wrapped": base64.b64encode(wrapped).decode(),
            "created_at": time.time(),
        }
        rec["current"][purpose] = dek_id
        self._owner[dek_id] = tenant_id
        self._save()
        self._remember(tenant_id, dek_id, dek)
        return dek_id, dek

    # -- public API --------------------------------------------------------------

    def create_tenant(self, tenant_id: str) -> None:
        """Create the tenant's KEK and records; idempotent. KeyDestroyed if it was shredded."""
        _check_name("tenant_id", tenant_id)
        with self._locked():
            self._refresh()
            rec = self._body["tenants"].get(tenant_id)
            if rec is not None and rec.get("shredded_at") is not None:
                raise KeyDestroyed(f"tenant {tenant_id!r} was crypto-shredded; ids are not reused")
            self.provider.create(tenant_id)
            if rec is None:
                self._body["tenants"][tenant_id] = {"shredded_at": None, "current": {}, "deks": {}}
                self._save()

    def has_tenant(self, tenant_id: str) -> bool:
        """True if the tenant exists and is not shredded."""
        with self._mutex:
            self._refresh()
            try:
                self._tenant(tenant_id)
            except (KeyNotFound, KeyDestroyed):
                return False
            return True

    def tenants(self) -> list[str]:
        with self._mutex:
            self._refresh()
            return sorted(t for t, r in self._body["tenants"].items() if r.get("shredded_at") is None)

    def data_key(self, tenant_id: str, purpose: str) -> tuple[str, bytes]:
        """Current (dek_id, dek) for ``purpose``, creating it on first use."""
        _check_name("purpose", purpose)
        with self._mutex:
            self._refresh()
            rec = self._tenant(tenant_id)
            dek_id = rec["current"].get(purpose)
            if dek_id is not None:
                return dek_id, self.dek(tenant_id, dek_id)
        with self._locked():
            self._refresh()
            rec = self._tenant(tenant_id)
            dek_id = rec["current"].get(purpose)  # another process may have won the race
            if dek_id is not None:
                return dek_id, self.dek(tenant_id, dek_id)
            return self._new_dek(tenant_id, rec, purpose)

    def rotate_dek(self, tenant_id: str, purpose: str) -> tuple[str, bytes]:
        """Start a new current DEK for ``purpose``; old DEKs keep decrypting old data."""
        _check_name("purpose", purpose)
        with self._locked():
            self._refresh()
            return self._new_dek(tenant_id, self._tenant(tenant_id), purpose)

    def dek(self, tenant_id: str, dek_id: str) -> bytes:
        """Unwrap DEK ``dek_id`` of ``tenant_id``. TenantMismatch if it is another tenant's."""
        with self._mutex:
            self._refresh()
            rec = self._tenant(tenant_id)
            hit = self._cached(tenant_id, dek_id)
            if hit is not None:
                return hit
            d = rec["deks"].get(dek_id)
            if d is None:
                owner = self._owner.get(dek_id)
                if owner is not None and owner != tenant_id:
                    raise TenantMismatch(f"DEK {dek_id} belongs to another tenant, not {tenant_id!r}")
                raise KeyNotFound(f"tenant {tenant_id!r} has no DEK {dek_id}", code="dek_unknown")
            dek = self._unwrap(tenant_id, dek_id, d)
            self._remember(tenant_id, dek_id, dek)
            return dek

    def list_deks(self, tenant_id: str) -> list[DekInfo]:
        with self._mutex:
            self._refresh()
            rec = self._tenant(tenant_id)
            current = set(rec["current"].values())
            return sorted(
                (
                    DekInfo(
                        k,
                        tenant_id,
                        d["purpose"],
                        int(d["kek_version"]),
                        float(d["created_at"]),
                        k in current,
                    )
                    for k, d in rec["deks"].items()
                ),
                key=lambda i: (i.created_at, i.dek_id),
            )

    def rotate_kek(self, tenant_id: str) -> int:
        """New KEK version; re-wrap every DEK under it, then retire older versions. Returns the version.

        Crash-safe: old KEK versions are destroyed only after the re-wrapped
        records are durably written; a rerun finishes an interrupted rotation.
        """
        with self._locked():
            self._refresh()
            rec = self._tenant(tenant_id)
            new_version = self.provider.rotate(tenant_id).current_version
            for dek_id, d in rec["deks"].items():
                dek = self._unwrap(tenant_id, dek_id, d)
                ctx = _context(tenant_id, dek_id, d["purpose"])
                d["wrapped"] = base64.b64encode(self.provider.wrap(tenant_id, new_version, dek, ctx)).decode()
                d["kek_version"] = new_version
            self._save()
            self.provider.retire(tenant_id, new_version)
            return new_version

    def shred_tenant(self, tenant_id: str) -> None:
        """Crypto-shred: destroy the KEK, then the wrapped DEKs. Irreversible; idempotent."""
        with self._locked():
            self._refresh()
            rec = self._body["tenants"].get(tenant_id)
            try:
                self.provider.destroy(tenant_id)  # the point of no return
            except KeyNotFound:
                if rec is None:
                    raise
            for dek_id in list(rec["deks"]) if rec else []:
                self._owner.pop(dek_id, None)
            self._body["tenants"][tenant_id] = {"shredded_at": time.time(), "current": {}, "deks": {}}
            self._save()
            for k in [k for k in self._cache if k[0] == tenant_id]:
                del self._cache[k]

    def forget_cache(self) -> None:
        """Drop cached plaintext DEKs (e.g. when a tenant's job ends)."""
        with self._mutex:
            self._cache.clear()


__all__ = ["DekInfo", "Keyring"]
