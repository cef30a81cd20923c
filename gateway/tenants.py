"""Tenants and their API keys, in one JSON file of Argon2id hashes.

Key format: ``tml-<lookup>-<secret>``

* ``tml-``: the prefix the official Tinker SDK insists on, so one key works on
  both API surfaces (docs/API.md §2).
* ``<lookup>`` (16 hex): public, stored in clear; 6 chars of the tenant id then
  10 random. It finds the one hash to check, so verifying a key is a single
  Argon2 computation instead of one per stored key.
* ``<secret>`` (48 hex, 192 bits): only its Argon2id hash is stored.

File (written atomically: temp + fsync + rename, under an advisory flock, so the
CLI can add keys while gateways run; readers reload when the file changes)::

    {"format": 1,
     "tenants": {tenant_id: {"name", "created_at", "status": "active"|"suspended"}},
     "keys": {lookup: {"tenant_id", "hash", "created_at", "revoked_at", "scope": "rw"|"ro"}}}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from tensafe.crypto.files import atomic_write, exclusive_lock, file_signature

KEY_PREFIX = "tml-"
_KEY_RE = re.compile(r"^tml-([0-9a-f]{16})-([0-9a-f]{48})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,127}$")

# API keys are 192-bit random, so Argon2 is not there to slow down guessing a weak
# secret; it makes a stolen file useless. RFC 9106's low-memory option keeps a
# verification near 20 ms on this hardware.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class TenantError(Exception):
    pass


@dataclass(frozen=True)
class KeyRecord:
    lookup: str
    tenant_id: str
    scope: str
    revoked: bool


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    name: str
    status: str
    created_at: float


def parse_key(api_key: str) -> tuple[str, str] | None:
    """(lookup, secret) of a well-formed key, else None."""
    m = _KEY_RE.match(api_key)
    return (m.group(1), m.group(2)) if m else None


class TenantStore:
    """Thread-safe; several processes may share the file (flock + reload on change)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.RLock()
        self._stat: tuple[int, int, int] | None = None
        self._body: dict[str, Any] = {"format": 1, "tenants": {}, "keys": {}}
        with self._locked():
            if self.path.exists():
                self._load()
            else:
                self._save()

    # -- persistence -------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with exclusive_lock(self._lock_path, self._mutex):
            yield

    def _file_stat(self) -> tuple[int, int, int] | None:
        return file_signature(self.path)

    def _load(self) -> None:
        try:
            body = json.loads(self.path.read_bytes())
            if body.get("format") != 1 or not isinstance(body.get("tenants"), dict):
                raise ValueError("bad format")
        except ValueError as e:
            raise TenantError(f"{self.path}: tenant store is damaged ({e})") from None
        body.setdefault("keys", {})
        self._body = body
        self._stat = self._file_stat()

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self._body, sort_keys=True, indent=1).encode())
        self._stat = self._file_stat()

    def refresh(self) -> bool:
        """Reload if another process changed the file; True if it did."""
        with self._mutex:
            if self._file_stat() != self._stat:
                self._load()
                return True
            return False

    @property
    def version(self) -> tuple[int, int, int] | None:
        return self._stat

    # -- tenants ------------------------------------------------------------------
    def create_tenant(self, name: str, *, keyring: Any = None, scope: str = "rw") -> tuple[str, str]:
        """New tenant and its first API key: ``(tenant_id, api_key)``. The key is shown once."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise TenantError("tenant name must match " + _NAME_RE.pattern)
        tenant_id = "tn_" + secrets.token_hex(12)
        with self._locked():
            self.refresh()
            self._body["tenants"][tenant_id] = {"name": name, "created_at": time.time(), "status": "active"}
            self._save()
        if keyring is not None:
            keyring.create_tenant(tenant_id)  # its KEK, so commands can be sealed at once
        return tenant_id, self.issue_key(tenant_id, scope=scope)

    def issue_key(self, tenant_id: str, *, scope: str = "rw") -> str:
        if scope not in ("rw", "ro"):
            raise TenantError("scope must be 'rw' or 'ro'")
        short = tenant_id.removeprefix("tn_")[:6].ljust(6, "0")
        short = "".join(c if c in "0123456789abcdef" else "0" for c in short.lower())
        secret = secrets.token_hex(24)
        with self._locked():
            self.refresh()
            if tenant_id not in self._body["tenants"]:
                raise TenantError(f"unknown tenant {tenant_id}")
            while True:
                lookup = short + secrets.token_hex(5)
                if lookup not in self._body["keys"]:
                    break
            self._body["keys"][lookup] = {
                "tenant_id": tenant_id,
                "hash": HASHER.hash(secret),
                "created_at": time.time(),
                "revoked_at": None,
                "scope": scope,
            }
            self._save()
        return f"{KEY_PREFIX}{lookup}-{secret}"

    def revoke_key(self, lookup_or_key: str) -> None:
        parsed = parse_key(lookup_or_key)
        lookup = parsed[0] if parsed else lookup_or_key
        with self._locked():
            self.refresh()
            rec = self._body["keys"].get(lookup)
            if rec is None:
                raise TenantError(f"unknown key {lookup}")
            rec["revoked_at"] = time.time()
            self._save()

    def set_status(self, tenant_id: str, status: str) -> None:
        if status not in ("active", "suspended"):
            raise TenantError("status must be 'active' or 'suspended'")
        with self._locked():
            self.refresh()
            if tenant_id not in self._body["tenants"]:
                raise TenantError(f"unknown tenant {tenant_id}")
            self._body["tenants"][tenant_id]["status"] = status
            self._save()

    def tenant(self, tenant_id: str) -> Tenant | None:
        with self._mutex:
            rec = self._body["tenants"].get(tenant_id)
            if rec is None:
                return None
            return Tenant(tenant_id, rec["name"], rec.get("status", "active"), rec["created_at"])

    def tenants(self) -> list[Tenant]:
        with self._mutex:
            return [t for t in (self.tenant(tid) for tid in sorted(self._body["tenants"])) if t is not None]

    def keys(self, tenant_id: str | None = None) -> list[KeyRecord]:
        with self._mutex:
            return [
                KeyRecord(lk, r["tenant_id"], r.get("scope", "rw"), r.get("revoked_at") is not None)
                for lk, r in sorted(self._body["keys"].items())
                if tenant_id is None or r["tenant_id"] == tenant_id
            ]

    def verify(self, api_key: str) -> KeyRecord | None:
        """The key's record if the key is well-formed, known, unrevoked and its secret matches.

        One Argon2 check at most (the lookup prefix selects the hash). Blocking: call
        it from a thread in async code.
        """
        parsed = parse_key(api_key)
        if parsed is None:
            return None
        lookup, secret = parsed
        with self._mutex:
            rec = self._body["keys"].get(lookup)
            if rec is None or rec.get("revoked_at") is not None:
                return None
            stored = rec["hash"]
            out = KeyRecord(lookup, rec["tenant_id"], rec.get("scope", "rw"), False)
        try:
            HASHER.verify(stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return out

    def key_state(self, lookup: str) -> KeyRecord | None:
        """Current record of a lookup prefix (revocations show up here after ``refresh``)."""
        with self._mutex:
            rec = self._body["keys"].get(lookup)
            if rec is None:
                return None
            return KeyRecord(
                lookup, rec["tenant_id"], rec.get("scope", "rw"), rec.get("revoked_at") is not None
            )


def create_tenant(store_path: str | os.PathLike[str], name: str, *, keyring: Any = None) -> tuple[str, str]:
    """CLI-friendly: open the store at ``store_path``, create a tenant, return ``(tenant_id, api_key)``."""
    return TenantStore(store_path).create_tenant(name, keyring=keyring)


def main(argv: list[str] | None = None) -> int:
    """``python -m tensafe.gateway.tenants --store tenants.json create NAME`` (and issue-key, revoke, list)."""
    ap = argparse.ArgumentParser(prog="tensafe-tenants", description="Manage TenSafe tenants and API keys")
    ap.add_argument(
        "--store", default=os.environ.get("TENSAFE_TENANTS", "tenants.json"), help="tenant store file"
    )
    ap.add_argument(
        "--keyring", help="keyring directory (TS_KEY_MASTER unlocks it); creates the tenant's KEK"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create a tenant and print its first API key")
    c.add_argument("name")
    k = sub.add_parser("issue-key", help="issue another key for a tenant")
    k.add_argument("tenant_id")
    k.add_argument("--scope", choices=["rw", "ro"], default="rw")
    r = sub.add_parser("revoke", help="revoke a key (by key or its lookup prefix)")
    r.add_argument("key")
    sub.add_parser("list", help="list tenants and key prefixes")
    args = ap.parse_args(argv)
    store = TenantStore(args.store)
    try:
        if args.cmd == "create":
            keyring = None
            if args.keyring:
                from tensafe.crypto.keyring import Keyring

                keyring = Keyring.open_local(args.keyring)
            tenant_id, key = store.create_tenant(args.name, keyring=keyring)
            print(json.dumps({"tenant_id": tenant_id, "api_key": key}))
        elif args.cmd == "issue-key":
            print(
                json.dumps(
                    {
                        "tenant_id": args.tenant_id,
                        "api_key": store.issue_key(args.tenant_id, scope=args.scope),
                    }
                )
            )
        elif args.cmd == "revoke":
            store.revoke_key(args.key)
        else:
            for t in store.tenants():
                keys = [f"{k.lookup}{' (revoked)' if k.revoked else ''}" for k in store.keys(t.tenant_id)]
                print(f"{t.tenant_id}\t{t.name}\t{t.status}\t{', '.join(keys)}")
    except TenantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
