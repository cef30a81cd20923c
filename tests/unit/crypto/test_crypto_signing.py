from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensafe.crypto.errors import KeyFormatError, SignatureError
from tensafe.crypto.signing import (
    CONTEXT,
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    HybridPublicKey,
    HybridSigningKey,
)

ED = slice(1, 65)
ML = slice(65, None)


@pytest.fixture(scope="module")
def key() -> HybridSigningKey:
    return HybridSigningKey.generate()


@pytest.fixture(scope="module")
def other() -> HybridSigningKey:
    return HybridSigningKey.generate()


def _code(exc: pytest.ExceptionInfo[SignatureError]) -> str:
    return exc.value.code


def test_roundtrip_sizes_and_key_id(key: HybridSigningKey) -> None:
    msg = b"checkpoint body"
    sig = key.sign(msg)
    pub = key.public_key()
    assert len(sig) == SIGNATURE_LEN == 3374
    assert len(pub.to_bytes()) == PUBLIC_KEY_LEN == 1985
    pub.verify(msg, sig)
    assert pub.key_id == hashlib.sha256(pub.to_bytes()).digest()[:16].hex()
    assert len(pub.key_id) == 32 and pub.key_id == key.key_id


def test_serialisation_roundtrip(key: HybridSigningKey) -> None:
    raw = key.to_bytes()
    assert len(raw) == 65
    again = HybridSigningKey.from_bytes(raw)
    assert again.public_key() == key.public_key()
    pub = HybridPublicKey.from_bytes(key.public_key().to_bytes())
    pub.verify(b"m", again.sign(b"m"))
    assert hash(pub) == hash(key.public_key())


def test_signatures_are_hedged_but_both_verify(key: HybridSigningKey) -> None:
    a, b = key.sign(b"m"), key.sign(b"m")
    assert a[ML] != b[ML]  # ML-DSA hedged signing
    assert a[ED] == b[ED]  # Ed25519 is deterministic
    key.public_key().verify(b"m", a)
    key.public_key().verify(b"m", b)


def test_wrong_message(key: HybridSigningKey) -> None:
    sig = key.sign(b"m1")
    with pytest.raises(SignatureError) as e:
        key.public_key().verify(b"m2", sig)
    assert _code(e) == "both_invalid"


@pytest.mark.parametrize("offset", [1, 30, 64, 65, 1000, SIGNATURE_LEN - 1])
def test_tamper_each_half(key: HybridSigningKey, offset: int) -> None:
    sig = bytearray(key.sign(b"m"))
    sig[offset] ^= 0x01
    with pytest.raises(SignatureError) as e:
        key.public_key().verify(b"m", bytes(sig))
    assert _code(e) == ("ed25519_invalid" if offset < 65 else "mldsa_invalid")


def test_suite_byte_tamper(key: HybridSigningKey) -> None:
    sig = bytearray(key.sign(b"m"))
    sig[0] = 0x02
    with pytest.raises(SignatureError) as e:
        key.public_key().verify(b"m", bytes(sig))
    assert _code(e) == "signature_malformed"


def test_swapped_key(key: HybridSigningKey, other: HybridSigningKey) -> None:
    with pytest.raises(SignatureError) as e:
        other.public_key().verify(b"m", key.sign(b"m"))
    assert _code(e) == "both_invalid"


def test_mix_halves_of_two_keys(key: HybridSigningKey, other: HybridSigningKey) -> None:
    a, b = key.sign(b"m"), other.sign(b"m")
    mixed = a[:65] + b[65:]
    for pub in (key.public_key(), other.public_key()):
        with pytest.raises(SignatureError):
            pub.verify(b"m", mixed)


def test_stripped_halves_rejected(key: HybridSigningKey) -> None:
    sig = key.sign(b"m")
    pub = key.public_key()
    for stripped in (
        sig[:65],
        sig[:1] + sig[65:],
        sig[:1] + bytes(64) + sig[65:],
        sig[:65] + bytes(3309),
        b"",
    ):
        with pytest.raises(SignatureError):
            pub.verify(b"m", stripped)


def test_component_key_reuse_cannot_transplant_signature(key: HybridSigningKey) -> None:
    """A hybrid key that shares the Ed25519 key but has another ML-DSA key gets nothing
    from the original's signatures: the combined public key is in the signed message."""
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(key.to_bytes()[1:33])
    chimera = HybridSigningKey(ed, mldsa.MLDSA65PrivateKey.generate())
    sig = key.sign(b"m")
    forged = sig[:65] + chimera.sign(b"m")[65:]  # real Ed25519 half of `key` + attacker's ML-DSA half
    with pytest.raises(SignatureError) as e:
        chimera.public_key().verify(b"m", forged)
    assert _code(e) == "ed25519_invalid"


def test_plain_component_signatures_do_not_verify(key: HybridSigningKey) -> None:
    """Signatures made without the hybrid domain separation (e.g. by another protocol using
    the same component keys) are not accepted."""
    raw = key.to_bytes()
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:33])
    ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(raw[33:])
    plain = b"\x01" + ed.sign(b"m") + ml.sign(b"m")
    with pytest.raises(SignatureError) as e:
        key.public_key().verify(b"m", plain)
    assert _code(e) == "both_invalid"
    # Right bound message but no FIPS 204 context: the ML-DSA half fails.
    bound = CONTEXT + b"\x00" + key.public_key().to_bytes() + b"m"
    no_ctx = b"\x01" + ed.sign(bound) + ml.sign(bound)
    with pytest.raises(SignatureError) as e:
        key.public_key().verify(b"m", no_ctx)
    assert _code(e) == "mldsa_invalid"


def test_malformed_public_key_is_valueerror() -> None:
    with pytest.raises(KeyFormatError) as e:
        HybridPublicKey.from_bytes(b"\x01" + bytes(10))
    assert isinstance(e.value, ValueError) and e.value.code == "public_key_malformed"
    with pytest.raises(KeyFormatError):
        HybridSigningKey.from_bytes(b"\x02" + bytes(64))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=st.binary(max_size=4096))
def test_any_message_roundtrips(key: HybridSigningKey, msg: bytes) -> None:
    sig = key.sign(msg)
    key.public_key().verify(msg, sig)
    assert not key.public_key().is_valid(msg + b"x", sig)
