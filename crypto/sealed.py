"""Sealing sensitive values with a tenant's current data key, naming the key.

``seal_field`` (fields.py) leaves the DEK id out; commands and events that travel
alone need it, so this wraps a sealed field with the id of the DEK that sealed it:

    0x02 || u8 len(dek_id) || dek_id (ASCII) || seal_field(...)

Opening looks the DEK up under the same tenant (Keyring refuses another tenant's
DEK), so a blob moved to another tenant fails, and a shredded tenant's blobs fail.
"""

from __future__ import annotations

from .errors import DecryptionError
from .fields import open_field, seal_field

VERSION = 0x02
LOG_FIELDS = "log-fields"


def seal(keyring, tenant_id: str, context: str, plaintext: bytes, purpose: str = LOG_FIELDS) -> bytes:
    dek_id, dek = keyring.data_key(tenant_id, purpose)
    raw_id = dek_id.encode("ascii")
    return bytes([VERSION, len(raw_id)]) + raw_id + seal_field(dek, tenant_id, context, plaintext)


def dek_id_of(blob: bytes) -> str:
    if len(blob) < 2 or blob[0] != VERSION or len(blob) < 2 + blob[1]:
        raise DecryptionError("not a sealed value", code="malformed")
    return blob[2 : 2 + blob[1]].decode("ascii")


def open_sealed(keyring, tenant_id: str, context: str, blob: bytes) -> bytes:
    dek_id = dek_id_of(blob)
    dek = keyring.dek(tenant_id, dek_id)
    return open_field(dek, tenant_id, context, blob[2 + blob[1] :])
