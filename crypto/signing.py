"""Hybrid Ed25519 + ML-DSA-65 signatures (ML-DSA-65 = FIPS 204; pre-standard name Dilithium3).

A hybrid signature is valid only if BOTH component signatures verify, so it
stays secure as long as either Ed25519 (classical) or ML-DSA-65 (post-quantum)
is unbroken.

Both components sign the same domain-separated message::

    M' = b"tensafe/hybrid-sig/v1\\x00" || public_key_bytes (1985 B) || message

and ML-DSA additionally gets the FIPS 204 context string ``b"tensafe/hybrid-sig/v1"``.
Binding the *combined* public key into M' means an Ed25519 half cannot be
re-paired with another ML-DSA key (or vice versa), a signature cannot be moved
to another hybrid key, and a half cannot be stripped and verified on its own
under this scheme.

Byte layouts (all fixed length, so no length fields)::

    public key  (1985 B) = 0x01 || Ed25519 public (32) || ML-DSA-65 public (1952)
    signature   (3374 B) = 0x01 || Ed25519 sig (64)    || ML-DSA-65 sig (3309)
    private key (65 B)   = 0x01 || Ed25519 seed (32)   || ML-DSA-65 seed xi (32)

0x01 is the format/algorithm-suite byte. ``key_id`` = hex(SHA-256(public key bytes)[:16]).
ML-DSA signing is the hedged (randomised) variant, so two signatures of the same
message differ; both verify.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from ._util import key_id_of, require
from .errors import KeyFormatError, SignatureError

require("mldsa")

SUITE_V1 = 0x01
CONTEXT = b"tensafe/hybrid-sig/v1"
_PREFIX = CONTEXT + b"\x00"

ED25519_PUBLIC_LEN = 32
ED25519_SIG_LEN = 64
MLDSA65_PUBLIC_LEN = 1952
MLDSA65_SIG_LEN = 3309
SEED_LEN = 32

PUBLIC_KEY_LEN = 1 + ED25519_PUBLIC_LEN + MLDSA65_PUBLIC_LEN  # 1985
SIGNATURE_LEN = 1 + ED25519_SIG_LEN + MLDSA65_SIG_LEN  # 3374
PRIVATE_KEY_LEN = 1 + SEED_LEN + SEED_LEN  # 65


def _bound_message(public_bytes: bytes, message: bytes) -> bytes:
    return b"".join((_PREFIX, public_bytes, message))


class HybridPublicKey:
    """Verifier side. Immutable; compare with ``==`` (by bytes)."""

    __slots__ = ("_ed", "_ml", "_bytes", "key_id")

    def __init__(self, ed: ed25519.Ed25519PublicKey, ml: mldsa.MLDSA65PublicKey) -> None:
        self._ed = ed
        self._ml = ml
        self._bytes = bytes([SUITE_V1]) + ed.public_bytes_raw() + ml.public_bytes_raw()
        self.key_id: str = key_id_of(self._bytes)

    def to_bytes(self) -> bytes:
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridPublicKey:
        data = bytes(data)
        if len(data) != PUBLIC_KEY_LEN or data[0] != SUITE_V1:
            raise KeyFormatError(
                f"hybrid public key must be {PUBLIC_KEY_LEN} bytes starting with 0x01, got {len(data)} bytes",
                code="public_key_malformed",
            )
        try:
            ed = ed25519.Ed25519PublicKey.from_public_bytes(data[1 : 1 + ED25519_PUBLIC_LEN])
            ml = mldsa.MLDSA65PublicKey.from_public_bytes(data[1 + ED25519_PUBLIC_LEN :])
        except ValueError as e:
            raise KeyFormatError(f"hybrid public key rejected: {e}", code="public_key_malformed") from None
        return cls(ed, ml)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Return None if both halves verify; raise SignatureError (with the failing half in ``code``)."""
        signature = bytes(signature)
        if len(signature) != SIGNATURE_LEN or signature[0] != SUITE_V1:
            raise SignatureError(
                f"hybrid signature must be {SIGNATURE_LEN} bytes starting with 0x01, got {len(signature)} bytes",
                code="signature_malformed",
            )
        bound = _bound_message(self._bytes, message)
        # Check both halves (no short-circuit) so the error says exactly which failed.
        ed_ok = ml_ok = True
        try:
            self._ed.verify(signature[1 : 1 + ED25519_SIG_LEN], bound)
        except InvalidSignature:
            ed_ok = False
        try:
            self._ml.verify(signature[1 + ED25519_SIG_LEN :], bound, CONTEXT)
        except InvalidSignature:
            ml_ok = False
        if ed_ok and ml_ok:
            return
        if not ed_ok and not ml_ok:
            raise SignatureError("both Ed25519 and ML-DSA-65 signatures are invalid", code="both_invalid")
        if not ed_ok:
            raise SignatureError("Ed25519 half of the hybrid signature is invalid", code="ed25519_invalid")
        raise SignatureError("ML-DSA-65 half of the hybrid signature is invalid", code="mldsa_invalid")

    def is_valid(self, message: bytes, signature: bytes) -> bool:
        try:
            self.verify(message, signature)
        except SignatureError:
            return False
        return True

    @property
    def ed25519_public_bytes(self) -> bytes:
        return self._bytes[1 : 1 + ED25519_PUBLIC_LEN]

    @property
    def mldsa65_public_bytes(self) -> bytes:
        return self._bytes[1 + ED25519_PUBLIC_LEN :]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridPublicKey) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"HybridPublicKey(key_id={self.key_id!r})"


class HybridSigningKey:
    """Signer side: an Ed25519 key and an ML-DSA-65 key used together."""

    __slots__ = ("_ed", "_ml", "_public")

    def __init__(self, ed: ed25519.Ed25519PrivateKey, ml: mldsa.MLDSA65PrivateKey) -> None:
        self._ed = ed
        self._ml = ml
        self._public = HybridPublicKey(ed.public_key(), ml.public_key())

    @classmethod
    def generate(cls) -> HybridSigningKey:
        """Fresh key pair from the OS CSPRNG (OpenSSL's DRBG seeded by getrandom)."""
        return cls(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())

    def public_key(self) -> HybridPublicKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def sign(self, message: bytes) -> bytes:
        bound = _bound_message(self._public.to_bytes(), message)
        return b"".join((bytes([SUITE_V1]), self._ed.sign(bound), self._ml.sign(bound, CONTEXT)))

    def to_bytes(self) -> bytes:
        """Raw seeds (65 bytes). Secret: store only sealed (e.g. via the keyring)."""
        return b"".join((bytes([SUITE_V1]), self._ed.private_bytes_raw(), self._ml.private_bytes_raw()))

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridSigningKey:
        data = bytes(data)
        if len(data) != PRIVATE_KEY_LEN or data[0] != SUITE_V1:
            raise KeyFormatError(
                f"hybrid signing key must be {PRIVATE_KEY_LEN} bytes starting with 0x01",
                code="private_key_malformed",
            )
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(data[1 : 1 + SEED_LEN])
        ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(data[1 + SEED_LEN :])
        return cls(ed, ml)

    def __repr__(self) -> str:
        return f"HybridSigningKey(key_id={self.key_id!r})"


__all__ = [
    "CONTEXT",
    "PUBLIC_KEY_LEN",
    "SIGNATURE_LEN",
    "HybridPublicKey",
    "HybridSigningKey",
]
