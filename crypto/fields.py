"""Field-level encryption for sensitive values inside ledger events.

Token ids, text, prompts and completions are stored in events as ``bytes``
sealed with the tenant's data key (DEK). One-shot AES-256-GCM (fields are
small, so the allocation cost of AESGCM does not matter here).

Blob layout (29 bytes of overhead)::

    0x01 (version) || nonce (12, random from os.urandom) || ciphertext || tag (16)

AAD = ``b"tensafe/field/v1" || u32 len(tenant) || tenant || u32 len(context) || context``,
so a blob cannot be replayed into another tenant or another field/event type
(``context`` names the field, e.g. ``"OptimStepApplied.prompt"``). The DEK id is
deliberately not in the blob: the event carries it once for all its fields.

Random 96-bit nonces: keep under 2^32 fields per DEK (NIST SP 800-38D);
``Keyring.rotate_dek`` starts a new DEK long before that.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._util import lp_str
from .errors import DecryptionError

VERSION = 0x01
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = 1 + NONCE_LEN + TAG_LEN
_LABEL = b"tensafe/field/v1"


def _aad(tenant_id: str, context: str) -> bytes:
    return _LABEL + lp_str(tenant_id) + lp_str(context)


def seal_field(dek: bytes, tenant_id: str, context: str, plaintext: bytes) -> bytes:
    """Encrypt one field value; the result is safe to store in a ledger event."""
    if len(dek) != 32:
        raise ValueError("field DEK must be 32 bytes (AES-256)")
    nonce = os.urandom(NONCE_LEN)
    return (
        bytes([VERSION])
        + nonce
        + AESGCM(bytes(dek)).encrypt(nonce, bytes(plaintext), _aad(tenant_id, context))
    )


def open_field(dek: bytes, tenant_id: str, context: str, blob: bytes) -> bytes:
    """Decrypt a sealed field; DecryptionError if the key, tenant, context or bytes differ."""
    if len(dek) != 32:
        raise ValueError("field DEK must be 32 bytes (AES-256)")
    if len(blob) < OVERHEAD:
        raise DecryptionError("sealed field shorter than its overhead", code="malformed")
    if blob[0] != VERSION:
        raise DecryptionError(f"unsupported sealed field version {blob[0]}", code="unsupported_version")
    try:
        return AESGCM(bytes(dek)).decrypt(
            bytes(blob[1 : 1 + NONCE_LEN]), bytes(blob[1 + NONCE_LEN :]), _aad(tenant_id, context)
        )
    except InvalidTag:
        raise DecryptionError(
            "sealed field failed authentication (wrong key, tenant or context, or tampered)",
            code="auth_failed",
        ) from None


__all__ = ["OVERHEAD", "open_field", "seal_field"]
