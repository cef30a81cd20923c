"""Hybrid X25519 + ML-KEM-768 key wrapping (ML-KEM-768 = FIPS 203; pre-standard name Kyber768).

Used to wrap a package/data key to one or more recipients (e.g. a TSSP package
key to the customer's key). Built on cryptography's HPKE (RFC 9180) in base
mode with the suite:

    KEM  = MLKEM768-X25519 (KEM id 0x647a, the X-Wing combiner of
           draft-ietf-hpke-pq: SHA3-256 over both shared secrets, the X25519
           ciphertext and the X25519 public key; ML-KEM binds its own pk/ct)
    KDF  = HKDF-SHA256
    AEAD = AES-256-GCM

so no home-made combiner is needed. The ``aad`` argument is bound into the
HPKE key schedule through ``info`` (cryptography's public HPKE API has no AAD
parameter; a different info yields a different key, so a wrong aad fails
exactly like a wrong key)::

    info = b"tensafe/kem-wrap/v1" || u32 len(aad) || aad || recipient key_id (16 raw bytes)

Byte layouts::

    public key  (1217 B) = 0x01 || ML-KEM-768 encapsulation key (1184) || X25519 public (32)
    private key (33 B)   = 0x01 || 32-byte X-Wing seed
                           (SHAKE256(seed, 96) -> ML-KEM seed d||z (64) || X25519 private (32),
                            exactly as draft-ietf-hpke-pq / X-Wing expand it; checked against
                            the HPKE PQ test vectors shipped in cryptography-vectors)
    wrapped blob         = 0x01 || recipient key_id (16 raw bytes)
                           || HPKE enc (1120 = 1088 ML-KEM ct + 32 X25519 ephemeral)
                           || AES-256-GCM(key) (len(key) + 16)

``key_id`` = hex(SHA-256(public key bytes)[:16]). Carrying the recipient key id
in clear lets ``unwrap_key`` say "wrong recipient" precisely instead of a
generic authentication failure.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from ._util import key_id_of, lp, require
from .errors import DecryptionError, KeyFormatError

require("mlkem")

SUITE_V1 = 0x01
INFO_LABEL = b"tensafe/kem-wrap/v1"
MLKEM768_PUBLIC_LEN = 1184
X25519_LEN = 32
SEED_LEN = 32
ENC_LEN = 1120
TAG_LEN = 16
KEY_ID_LEN = 16
PUBLIC_KEY_LEN = 1 + MLKEM768_PUBLIC_LEN + X25519_LEN  # 1217
PRIVATE_KEY_LEN = 1 + SEED_LEN  # 33
BLOB_OVERHEAD = 1 + KEY_ID_LEN + ENC_LEN + TAG_LEN  # 1153

_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _info(aad: bytes, kid_raw: bytes) -> bytes:
    return INFO_LABEL + lp(bytes(aad)) + kid_raw


class HybridKemPublicKey:
    __slots__ = ("_mlkem", "_x25519", "_hpke", "_bytes", "key_id")

    def __init__(self, mlkem_pub: mlkem.MLKEM768PublicKey, x_pub: x25519.X25519PublicKey) -> None:
        self._mlkem = mlkem_pub
        self._x25519 = x_pub
        self._hpke = hpke.MLKEM768X25519PublicKey(mlkem_pub, x_pub)
        self._bytes = bytes([SUITE_V1]) + mlkem_pub.public_bytes_raw() + x_pub.public_bytes_raw()
        self.key_id: str = key_id_of(self._bytes)

    def to_bytes(self) -> bytes:
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridKemPublicKey:
        data = bytes(data)
        if len(data) != PUBLIC_KEY_LEN or data[0] != SUITE_V1:
            raise KeyFormatError(
                f"hybrid KEM public key must be {PUBLIC_KEY_LEN} bytes starting with 0x01",
                code="public_key_malformed",
            )
        try:
            mk = mlkem.MLKEM768PublicKey.from_public_bytes(data[1 : 1 + MLKEM768_PUBLIC_LEN])
            xk = x25519.X25519PublicKey.from_public_bytes(data[1 + MLKEM768_PUBLIC_LEN :])
        except ValueError as e:
            raise KeyFormatError(
                f"hybrid KEM public key rejected: {e}", code="public_key_malformed"
            ) from None
        return cls(mk, xk)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridKemPublicKey) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"HybridKemPublicKey(key_id={self.key_id!r})"


class HybridKemPrivateKey:
    __slots__ = ("_seed", "_hpke", "_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError("X-Wing seed must be 32 bytes")
        self._seed = bytes(seed)
        expanded = hashlib.shake_256(self._seed).digest(96)
        mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        xk = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        self._hpke = hpke.MLKEM768X25519PrivateKey(mk, xk)
        self._public = HybridKemPublicKey(mk.public_key(), xk.public_key())

    @classmethod
    def generate(cls) -> HybridKemPrivateKey:
        import secrets

        return cls(secrets.token_bytes(SEED_LEN))

    def public_key(self) -> HybridKemPublicKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def to_bytes(self) -> bytes:
        """0x01 || 32-byte seed. Secret: store only sealed."""
        return bytes([SUITE_V1]) + self._seed

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridKemPrivateKey:
        data = bytes(data)
        if len(data) != PRIVATE_KEY_LEN or data[0] != SUITE_V1:
            raise KeyFormatError(
                f"hybrid KEM private key must be {PRIVATE_KEY_LEN} bytes starting with 0x01",
                code="private_key_malformed",
            )
        return cls(data[1:])

    def __repr__(self) -> str:
        return f"HybridKemPrivateKey(key_id={self.key_id!r})"


def wrap_key(recipient_public: HybridKemPublicKey, key: bytes, aad: bytes = b"") -> bytes:
    """Encrypt ``key`` (any short secret) to ``recipient_public``; ``aad`` must match on unwrap."""
    kid_raw = bytes.fromhex(recipient_public.key_id)
    ct = _SUITE.encrypt(bytes(key), recipient_public._hpke, info=_info(aad, kid_raw))
    return bytes([SUITE_V1]) + kid_raw + ct


def recipient_key_id(blob: bytes) -> str:
    """The key id the blob was wrapped to (lets a holder of several keys pick the right one)."""
    if len(blob) < BLOB_OVERHEAD or blob[0] != SUITE_V1:
        raise DecryptionError("not a TenSafe KEM-wrapped key blob", code="malformed")
    return bytes(blob[1 : 1 + KEY_ID_LEN]).hex()


def unwrap_key(private: HybridKemPrivateKey, blob: bytes, aad: bytes = b"") -> bytes:
    """Recover the wrapped key. DecryptionError code: wrong_recipient | auth_failed | malformed."""
    blob = bytes(blob)
    kid = recipient_key_id(blob)
    if not hmac.compare_digest(kid, private.key_id):
        raise DecryptionError(
            f"blob is wrapped to key {kid}, not to this key {private.key_id}", code="wrong_recipient"
        )
    try:
        return _SUITE.decrypt(
            blob[1 + KEY_ID_LEN :], private._hpke, info=_info(aad, blob[1 : 1 + KEY_ID_LEN])
        )
    except Exception:  # InvalidTag / ValueError from HPKE; never leak which
        raise DecryptionError(
            "wrapped key failed authentication (tampered blob, wrong aad, or forged recipient id)",
            code="auth_failed",
        ) from None


__all__ = [
    "HybridKemPrivateKey",
    "HybridKemPublicKey",
    "recipient_key_id",
    "unwrap_key",
    "wrap_key",
]
