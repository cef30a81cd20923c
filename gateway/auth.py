"""API-key authentication: header parsing, one Argon2 check per new key, a cache after that.

The cache maps SHA-256(key) -> (tenant, lookup, scope); a hit costs a hash, not an
Argon2 computation. Entries expire after ``ttl`` and are dropped at once when the
tenant store file changes (a revocation or suspension by the CLI), so a revoked
key stops working within one request of the change being visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from starlette.requests import Request
from tensafe.gateway.errors import ApiError, forbidden, unauthenticated
from tensafe.gateway.tenants import TenantStore, parse_key


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every lookup is scoped to."""

    tenant_id: str
    key_lookup: str
    scope: str  # "rw" | "ro"


def key_from_headers(request: Request) -> str:
    """The API key of ``Authorization: Bearer`` or ``X-API-Key``; both present must agree."""
    auth = request.headers.get("authorization")
    xkey = request.headers.get("x-api-key")
    bearer = None
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthenticated("Authorization header must be 'Bearer <api_key>'")
        bearer = value.strip()
    if xkey is not None:
        xkey = xkey.strip()
    if bearer is not None and xkey is not None and bearer != xkey:
        raise unauthenticated("Authorization and X-API-Key carry different keys")
    key = bearer if bearer is not None else xkey
    if not key:
        raise unauthenticated("missing API key (Authorization: Bearer <key> or X-API-Key)")
    return key


class Authenticator:
    def __init__(self, store: TenantStore, *, ttl: float = 300.0, max_entries: int = 10_000) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        # Keys that failed recently: a client hammering a wrong key must not buy an
        # Argon2 computation per request.
        self._failed: dict[bytes, float] = {}
        self._store_version = store.version
        self._last_refresh = 0.0
        self.argon2_checks = 0  # observable: tests assert the cache works

    def _maybe_refresh(self) -> None:
        # A stat at most every 0.5 s: cheap, and revocations propagate quickly.
        now = time.monotonic()
        if now - self._last_refresh < 0.5:
            return
        self._last_refresh = now
        self.store.refresh()
        if self.store.version != self._store_version:
            self._store_version = self.store.version
            self._cache.clear()
            self._failed.clear()  # a key issued just now must work at once

    async def authenticate(self, request: Request, *, write: bool) -> Principal:
        key = key_from_headers(request)
        if parse_key(key) is None:
            raise unauthenticated("malformed API key")
        self._maybe_refresh()
        digest = hashlib.sha256(key.encode()).digest()
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            if self._failed.get(digest, 0.0) > now:
                raise unauthenticated("unknown or revoked API key")
            self.argon2_checks += 1
            # Argon2 takes ~20 ms of CPU: off the event loop.
            rec = await asyncio.to_thread(self.store.verify, key)
            if rec is None:
                if len(self._failed) >= self.max_entries:
                    self._failed.clear()
                self._failed[digest] = now + 10.0
                raise unauthenticated("unknown or revoked API key")
            principal = Principal(rec.tenant_id, rec.lookup, rec.scope)
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.ttl)
        tenant = self.store.tenant(principal.tenant_id)
        if tenant is None:
            raise unauthenticated("unknown or revoked API key")
        if tenant.status != "active":
            raise forbidden("tenant is suspended")
        if write and principal.scope != "rw":
            raise forbidden("this API key is read-only")
        return principal


__all__ = ["ApiError", "Authenticator", "Principal", "key_from_headers"]
