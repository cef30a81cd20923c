from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensafe.crypto.errors import DecryptionError
from tensafe.crypto.fields import OVERHEAD, open_field, seal_field
from tensafe.crypto.keyring import Keyring

DEK = os.urandom(32)


@settings(max_examples=50, deadline=None)
@given(pt=st.binary(max_size=2048), ctx=st.text(max_size=40), tenant=st.text(min_size=1, max_size=20))
def test_roundtrip(pt: bytes, ctx: str, tenant: str) -> None:
    blob = seal_field(DEK, tenant, ctx, pt)
    assert len(blob) == len(pt) + OVERHEAD == len(pt) + 29
    assert open_field(DEK, tenant, ctx, blob) == pt


def test_random_nonce() -> None:
    assert seal_field(DEK, "t", "c", b"x") != seal_field(DEK, "t", "c", b"x")


@pytest.mark.parametrize(
    "dek,tenant,ctx",
    [
        (os.urandom(32), "t", "prompt"),
        (DEK, "u", "prompt"),
        (DEK, "t", "completion"),
        (DEK, "t\x00", "prompt"),
    ],
)
def test_wrong_key_tenant_or_context(dek: bytes, tenant: str, ctx: str) -> None:
    blob = seal_field(DEK, "t", "prompt", b"secret prompt")
    with pytest.raises(DecryptionError) as e:
        open_field(dek, tenant, ctx, blob)
    assert e.value.code == "auth_failed"


def test_length_prefix_prevents_ambiguity() -> None:
    """("ab", "c") and ("a", "bc") must not share AAD."""
    blob = seal_field(DEK, "ab", "c", b"x")
    with pytest.raises(DecryptionError):
        open_field(DEK, "a", "bc", blob)


@pytest.mark.parametrize("offset", [1, 12, 13, -1])
def test_tamper(offset: int) -> None:
    blob = bytearray(seal_field(DEK, "t", "c", b"payload"))
    blob[offset] ^= 0x80
    with pytest.raises(DecryptionError):
        open_field(DEK, "t", "c", bytes(blob))


def test_malformed_and_version() -> None:
    with pytest.raises(DecryptionError) as e:
        open_field(DEK, "t", "c", b"\x01" + bytes(5))
    assert e.value.code == "malformed"
    blob = bytearray(seal_field(DEK, "t", "c", b"x"))
    blob[0] = 7
    with pytest.raises(DecryptionError) as e:
        open_field(DEK, "t", "c", bytes(blob))
    assert e.value.code == "unsupported_version"
    with pytest.raises(ValueError):
        seal_field(b"short", "t", "c", b"x")


# -- tensafe.crypto.sealed: sealed fields that carry their DEK id ---------------------


def test_sealed_values_name_their_dek(keyring: Keyring) -> None:
    from tensafe.crypto import sealed
    from tensafe.crypto.errors import KeyDestroyed, TenantMismatch

    blob = sealed.seal(keyring, "acme", "CommandSubmitted.prompt", b"hello")
    dek_id, _ = keyring.data_key("acme", sealed.LOG_FIELDS)
    assert sealed.dek_id_of(blob) == dek_id
    assert sealed.open_sealed(keyring, "acme", "CommandSubmitted.prompt", blob) == b"hello"
    keyring.rotate_dek("acme", sealed.LOG_FIELDS)  # old blobs still open after DEK rotation
    assert sealed.open_sealed(keyring, "acme", "CommandSubmitted.prompt", blob) == b"hello"
    with pytest.raises(TenantMismatch):
        sealed.open_sealed(keyring, "globex", "CommandSubmitted.prompt", blob)
    with pytest.raises(DecryptionError):
        sealed.open_sealed(keyring, "acme", "OtherEvent.prompt", blob)
    with pytest.raises(DecryptionError):
        sealed.dek_id_of(b"\x01junk")
    keyring.shred_tenant("acme")
    with pytest.raises(KeyDestroyed):
        sealed.open_sealed(keyring, "acme", "CommandSubmitted.prompt", blob)
