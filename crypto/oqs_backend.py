"""Optional liboqs backend, used only to cross-check the primary (OpenSSL) implementation.

``import oqs`` (liboqs-python) is never attempted unless the liboqs shared
library is already installed: without it, liboqs-python tries to git-clone and
build liboqs at import time and then raises ``SystemExit`` (not ImportError).
So this module looks the library up with ``ctypes.util.find_library("oqs")``
first and treats every failure as "not available".

Cross-checks (all return bool, never raise on a mismatch):

* ``mldsa65_verify``: verify an ML-DSA-65 signature with liboqs.
* ``cross_verify_hybrid``: verify the ML-DSA-65 half of a TenSafe hybrid
  signature with liboqs (the Ed25519 half is classical, no second opinion needed).
* ``cross_check_mlkem768``: liboqs encapsulates to an OpenSSL-generated ML-KEM-768
  key; OpenSSL must decapsulate to the same shared secret.
"""

from __future__ import annotations

import ctypes.util
import functools
from types import ModuleType

from .errors import BackendUnavailable

UNAVAILABLE_REASON = "liboqs shared library not installed"


@functools.cache
def _oqs() -> ModuleType | None:
    if ctypes.util.find_library("oqs") is None:
        return None
    try:
        import oqs  # type: ignore[import-not-found]
    except (ImportError, OSError, RuntimeError, SystemExit):  # SystemExit: see module docstring
        return None
    return oqs


def available() -> bool:
    """True if liboqs is installed and liboqs-python imported cleanly."""
    return _oqs() is not None


def _require() -> ModuleType:
    mod = _oqs()
    if mod is None:
        raise BackendUnavailable(UNAVAILABLE_REASON, code="liboqs_missing")
    return mod


def mldsa65_verify(public_key: bytes, message: bytes, signature: bytes, context: bytes = b"") -> bool:
    oqs = _require()
    with oqs.Signature("ML-DSA-65") as sig:
        if context:
            return bool(sig.verify_with_ctx_str(message, signature, context, public_key))
        return bool(sig.verify(message, signature, public_key))


def cross_verify_hybrid(public_key: object, message: bytes, signature: bytes) -> bool:
    """Check the ML-DSA-65 half of a ``HybridSigningKey`` signature with liboqs."""
    from . import signing

    assert isinstance(public_key, signing.HybridPublicKey)
    if len(signature) != signing.SIGNATURE_LEN:
        return False
    bound = signing._bound_message(public_key.to_bytes(), message)
    ml_sig = signature[1 + signing.ED25519_SIG_LEN :]
    return mldsa65_verify(public_key.mldsa65_public_bytes, bound, ml_sig, signing.CONTEXT)


def cross_check_mlkem768(private_key: object) -> bool:
    """liboqs encapsulates to ``private_key``'s public key; OpenSSL must decapsulate identically.

    ``private_key`` is a ``cryptography`` ``MLKEM768PrivateKey``.
    """
    from cryptography.hazmat.primitives.asymmetric import mlkem

    assert isinstance(private_key, mlkem.MLKEM768PrivateKey)
    oqs = _require()
    with oqs.KeyEncapsulation("ML-KEM-768") as kem:
        ct, ss = kem.encap_secret(private_key.public_key().public_bytes_raw())
    return bytes(private_key.decapsulate(ct)) == bytes(ss)


__all__ = [
    "UNAVAILABLE_REASON",
    "available",
    "cross_check_mlkem768",
    "cross_verify_hybrid",
    "mldsa65_verify",
]
