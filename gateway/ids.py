"""Identifiers, canonical JSON and fingerprints.

Why ids are derived rather than random: a retried request (same tenant, same
Idempotency-Key) must name the same command, client and dataset even on another
gateway or after a restart. So everything hangs off the command id of
``tensafe.events.commands.command_id_for``:

* command id  ``cmd_<32 hex>``  (on Kafka and the ledger)
* future id   ``fut_<same 32 hex>`` (the API's prefix for the same value:
  ``future_id_of``/``command_id_of`` convert both ways, so audit entries can show
  the future id the client holds)
* client id   ``tc_`` + SHA-256("tensafe/client/" + command id)[:32 hex]
* dataset id  ``ds_`` + SHA-256("tensafe/dataset/" + command id)[:32 hex]
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from tensafe.events.commands import command_id_for, new_id

CMD_PREFIX = "cmd_"
FUT_PREFIX = "fut_"
IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Keys cannot contain "/", so internally derived command ids never collide with a client's key.
_INTERNAL = "tensafe/"


def command_id(tenant_id: str, idempotency_key: str | None) -> str:
    """The command id of a request: derived from the key, or fresh when the client sent none."""
    if idempotency_key is None:
        return new_id("cmd")
    return command_id_for(tenant_id, idempotency_key)


def internal_command_id(tenant_id: str, purpose: str) -> str:
    """A deterministic id for a command the gateway issues on its own (e.g. a cancel)."""
    return command_id_for(tenant_id, _INTERNAL + purpose)


def future_id_of(cmd_id: str) -> str:
    return FUT_PREFIX + cmd_id.removeprefix(CMD_PREFIX) if cmd_id.startswith(CMD_PREFIX) else cmd_id


def command_id_of(future_id: str) -> str | None:
    if not future_id.startswith(FUT_PREFIX):
        return None
    return CMD_PREFIX + future_id.removeprefix(FUT_PREFIX)


def _derive(prefix: str, kind: str, cmd_id: str) -> str:
    return prefix + hashlib.sha256(f"tensafe/{kind}/{cmd_id}".encode()).hexdigest()[:32]


def client_id_for(cmd_id: str) -> str:
    return _derive("tc_", "client", cmd_id)


def dataset_id_for(cmd_id: str) -> str:
    return _derive("ds_", "dataset", cmd_id)


def canonical_json(value: Any) -> bytes:
    """API.md §1 canonical JSON (sorted keys, no whitespace, UTF-8, no ASCII escaping)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def fingerprint(method: str, path: str, body: Any) -> str:
    """API.md §5: SHA-256 of METHOD \\n path \\n canonical JSON of the body ({} when empty)."""
    h = hashlib.sha256()
    h.update(f"{method.upper()}\n{path}\n".encode())
    h.update(canonical_json({} if body is None else body))
    return h.hexdigest()


def sha256_tag(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rfc3339(ms: int | float | None) -> str | None:
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
