"""Exceptions raised by ``tensafe.crypto``.

Every exception carries a machine-readable ``code`` (a short snake_case string)
so callers (the gateway, the ledger, the trainer) can map failures to API
errors and audit events without parsing messages. Messages never contain key
material or plaintext.

Codes used (class -> codes):

* ``SignatureError``: ``signature_malformed``, ``ed25519_invalid``, ``mldsa_invalid``, ``both_invalid``.
* ``DecryptionError``: ``decryption_failed`` (generic), ``auth_failed``,
  ``wrong_recipient``, ``malformed``, ``unsupported_version``, ``truncated``,
  ``trailing_data``, ``length_mismatch``, ``wrong_key``.
* ``IntegrityError``: ``content_hash_mismatch``, ``artifact_id_mismatch``,
  ``header_mismatch``.
* ``KeyFormatError`` (also a ValueError): ``public_key_malformed``, ``private_key_malformed``.
* ``KeyNotFound``: ``tenant_unknown``, ``dek_unknown``, ``kek_version_unknown``.
* ``KeyDestroyed``: ``tenant_shredded``.
* ``TenantMismatch``: ``tenant_mismatch``.
* ``KeyringLocked``: ``bad_passphrase``, ``wrong_unlock_method``, ``no_unlock_secret``.
* ``KeyringCorrupt``: ``keyring_corrupt``.
* ``ArtifactNotFound``: ``artifact_not_found``.
* ``StorageError``: ``storage_error`` or the S3 error code (``NoSuchKey``...).
* ``BackendUnavailable``: ``mldsa_unsupported``, ``mlkem_unsupported``,
  ``argon2_unsupported``, ``liboqs_missing``.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``str()`` is for humans."""

    code: str = "crypto_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={str(self)!r})"


class SignatureError(CryptoError):
    """A hybrid signature (or the public key used to check it) did not verify."""

    code = "signature_invalid"


class DecryptionError(CryptoError):
    """Ciphertext could not be authenticated/decrypted (tampered, wrong key, wrong AAD...)."""

    code = "decryption_failed"


class IntegrityError(CryptoError):
    """Data decrypted but does not match what was recorded (hash, ids, header)."""

    code = "integrity_error"


class KeyNotFound(CryptoError):
    """A tenant, DEK id or KEK version does not exist."""

    code = "key_not_found"


class KeyDestroyed(CryptoError):
    """The tenant was crypto-shredded; its keys are gone for good."""

    code = "tenant_shredded"


class TenantMismatch(CryptoError):
    """An object or key id belongs to a different tenant than the caller's."""

    code = "tenant_mismatch"


class KeyringLocked(CryptoError):
    """The keyring file could not be unlocked (wrong passphrase / master key)."""

    code = "bad_passphrase"


class KeyringCorrupt(CryptoError):
    """The keyring file is not a TenSafe keyring or its structure is damaged."""

    code = "keyring_corrupt"


class ArtifactNotFound(CryptoError):
    """No artifact with that id exists for that tenant."""

    code = "artifact_not_found"


class StorageError(CryptoError):
    """The storage backend failed (I/O error, S3 error response)."""

    code = "storage_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code=code)
        self.status = status


class KeyFormatError(CryptoError, ValueError):
    """Key bytes do not parse (wrong length/suite byte, invalid point). Also a ValueError."""

    code = "key_malformed"


class BackendUnavailable(CryptoError, RuntimeError):
    """The installed crypto backend lacks a required algorithm."""

    code = "backend_unavailable"


__all__ = [
    "ArtifactNotFound",
    "BackendUnavailable",
    "CryptoError",
    "DecryptionError",
    "IntegrityError",
    "KeyDestroyed",
    "KeyFormatError",
    "KeyNotFound",
    "KeyringCorrupt",
    "KeyringLocked",
    "SignatureError",
    "StorageError",
    "TenantMismatch",
]
