"""Idempotency-Key handling (docs/API.md §5), scoped per tenant.

Two sources of truth, in order:

1. an in-memory map ``(tenant, key) -> slot`` of this process: in-flight requests
   (-> 409 idempotency_in_progress) and stored 2xx answers (-> replay) for ``ttl``;
2. the read model: the command id is derived from (tenant, key), so after a
   restart the command of an earlier attempt is found by id. Its Kafka record
   carries the fingerprint and the 2xx answer in headers (``tensafe-idem``), so
   the retry is replayed or refused exactly as before the restart. A command
   known only from the ledger (headers gone) is replayed from what the ledger says.

Only 2xx answers are stored: a request that failed does not consume its key.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tensafe.gateway.errors import ApiError
from tensafe.gateway.futures import FutureRec


@dataclass
class Stored:
    status: int
    body: dict[str, Any]


@dataclass
class _Slot:
    fingerprint: str
    expires: float
    stored: Stored | None = None  # None while in progress


class Reservation:
    """What a request holds while it runs: ``replay`` is set if it must only replay."""

    def __init__(self, key: str | None, fingerprint: str, replay: Stored | None) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.replay = replay
        self.stored: Stored | None = None

    def store(self, status: int, body: dict[str, Any]) -> None:
        self.stored = Stored(status, body)

    def header_value(self, status: int, body: dict[str, Any]) -> dict[str, Any] | None:
        """The replay record that travels with the command (Kafka header ``tensafe-idem``)."""
        if self.key is None:
            return None
        return {"fp": self.fingerprint, "status": status, "body": body}


def _conflict(key: str) -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "Idempotency-Key was already used with a different method, path or body",
        {"idempotency_key": key},
    )


class IdempotencyStore:
    def __init__(self, ttl: float, lookup_command: Callable[[str, str], FutureRec | None]) -> None:
        """``lookup_command(tenant, key)``: the future of the command derived from the key, if known."""
        self.ttl = ttl
        self._lookup_command = lookup_command
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._inserts = 0

    def _purge(self) -> None:
        now = time.monotonic()
        for k in [k for k, s in self._slots.items() if s.stored is not None and s.expires < now]:
            del self._slots[k]

    @contextlib.asynccontextmanager
    async def reserve(self, tenant_id: str, key: str | None, fingerprint: str) -> AsyncIterator[Reservation]:
        if key is None:
            yield Reservation(None, fingerprint, None)
            return
        ident = (tenant_id, key)
        slot = self._slots.get(ident)
        now = time.monotonic()
        if slot is not None and slot.stored is not None and slot.expires < now:
            del self._slots[ident]
            slot = None
        if slot is not None:
            if slot.fingerprint != fingerprint:
                raise _conflict(key)
            if slot.stored is None:
                raise ApiError(
                    409,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed",
                    {"idempotency_key": key},
                )
            yield Reservation(key, fingerprint, slot.stored)
            return
        known = self._lookup_command(tenant_id, key)
        if known is not None:
            replay = self._from_log(known, key, fingerprint)
            if replay is not None:
                self._slots[ident] = _Slot(fingerprint, now + self.ttl, replay)
                yield Reservation(key, fingerprint, replay)
                return
        slot = _Slot(fingerprint, now + self.ttl)
        self._slots[ident] = slot
        res = Reservation(key, fingerprint, None)
        try:
            yield res
        finally:
            if res.stored is not None and 200 <= res.stored.status < 300:
                slot.stored = res.stored
                slot.expires = time.monotonic() + self.ttl
                self._inserts += 1
                if self._inserts % 1024 == 0:
                    self._purge()
            else:
                self._slots.pop(ident, None)  # failures do not consume the key

    @staticmethod
    def _from_log(rec: FutureRec, key: str, fingerprint: str) -> Stored | None:
        if rec.idem is not None:
            if rec.idem.get("fp") != fingerprint:
                raise _conflict(key)
            return Stored(int(rec.idem["status"]), rec.idem["body"])
        return None  # known only from the ledger: the caller re-derives the same answer
