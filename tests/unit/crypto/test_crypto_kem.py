from __future__ import annotations

import os

import pytest
from tensafe.crypto.errors import DecryptionError, KeyFormatError
from tensafe.crypto.kem import (
    BLOB_OVERHEAD,
    PUBLIC_KEY_LEN,
    HybridKemPrivateKey,
    HybridKemPublicKey,
    recipient_key_id,
    unwrap_key,
    wrap_key,
)


@pytest.fixture(scope="module")
def alice() -> HybridKemPrivateKey:
    return HybridKemPrivateKey.generate()


@pytest.fixture(scope="module")
def bob() -> HybridKemPrivateKey:
    return HybridKemPrivateKey.generate()


def test_roundtrip_and_sizes(alice: HybridKemPrivateKey) -> None:
    key = os.urandom(32)
    blob = wrap_key(alice.public_key(), key, b"package:42")
    assert len(blob) == BLOB_OVERHEAD + 32
    assert len(alice.public_key().to_bytes()) == PUBLIC_KEY_LEN == 1217
    assert recipient_key_id(blob) == alice.key_id
    assert unwrap_key(alice, blob, b"package:42") == key
    # Encapsulation is randomised.
    assert wrap_key(alice.public_key(), key, b"package:42") != blob


def test_serialisation(alice: HybridKemPrivateKey) -> None:
    priv = HybridKemPrivateKey.from_bytes(alice.to_bytes())
    assert len(alice.to_bytes()) == 33
    assert priv.public_key() == alice.public_key()
    pub = HybridKemPublicKey.from_bytes(alice.public_key().to_bytes())
    assert pub.key_id == alice.key_id
    blob = wrap_key(pub, b"k" * 16, b"")
    assert unwrap_key(priv, blob, b"") == b"k" * 16


def test_wrong_recipient(alice: HybridKemPrivateKey, bob: HybridKemPrivateKey) -> None:
    blob = wrap_key(alice.public_key(), os.urandom(32), b"aad")
    with pytest.raises(DecryptionError) as e:
        unwrap_key(bob, blob, b"aad")
    assert e.value.code == "wrong_recipient"


def test_forged_recipient_id(alice: HybridKemPrivateKey, bob: HybridKemPrivateKey) -> None:
    """Rewriting the clear key id to Bob's does not let Bob open it."""
    blob = bytearray(wrap_key(alice.public_key(), os.urandom(32), b"aad"))
    blob[1:17] = bytes.fromhex(bob.key_id)
    with pytest.raises(DecryptionError) as e:
        unwrap_key(bob, bytes(blob), b"aad")
    assert e.value.code == "auth_failed"


def test_wrong_aad(alice: HybridKemPrivateKey) -> None:
    blob = wrap_key(alice.public_key(), os.urandom(32), b"tenant-a")
    with pytest.raises(DecryptionError) as e:
        unwrap_key(alice, blob, b"tenant-b")
    assert e.value.code == "auth_failed"


@pytest.mark.parametrize("offset", [17, 17 + 500, 17 + 1087, 17 + 1088, 17 + 1119, 17 + 1120, -1])
def test_tamper_anywhere(alice: HybridKemPrivateKey, offset: int) -> None:
    """ML-KEM ciphertext, X25519 ephemeral key, AEAD body and tag are all covered."""
    blob = bytearray(wrap_key(alice.public_key(), os.urandom(32), b""))
    blob[offset] ^= 0x40
    with pytest.raises(DecryptionError) as e:
        unwrap_key(alice, bytes(blob), b"")
    assert e.value.code == "auth_failed"


def test_malformed(alice: HybridKemPrivateKey) -> None:
    with pytest.raises(DecryptionError) as e:
        unwrap_key(alice, b"\x01" + bytes(20), b"")
    assert e.value.code == "malformed"
    with pytest.raises(KeyFormatError):
        HybridKemPublicKey.from_bytes(bytes(PUBLIC_KEY_LEN))
    with pytest.raises(KeyFormatError):
        HybridKemPrivateKey.from_bytes(b"\x01" + bytes(5))
