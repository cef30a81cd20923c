from __future__ import annotations

import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensafe.crypto import aead
from tensafe.crypto.errors import DecryptionError

KEY = bytes(range(32))
T, A = "tenant-a", "art-1"
C = 64  # small chunks so every test is multi-chunk


def _chunks(blob: bytes, chunk_size: int = C) -> tuple[bytes, list[bytes]]:
    step = chunk_size + aead.TAG_LEN
    body = blob[aead.HEADER_LEN :]
    return blob[: aead.HEADER_LEN], [body[i : i + step] for i in range(0, len(body), step)]


def _open_fails(
    blob: bytes, code: str | None = None, tenant: str = T, artifact: str = A, key: bytes = KEY
) -> None:
    with pytest.raises(DecryptionError) as e:
        aead.open(key, blob, tenant, artifact)
    if code:
        assert e.value.code == code
    # The streaming decoder must refuse it too.
    with pytest.raises(DecryptionError):
        aead.decrypt_stream(key, io.BytesIO(blob), io.BytesIO(), tenant, artifact)


class Trickle(io.RawIOBase):
    """Returns at most 7 bytes per read, like a slow socket."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        data = self._f.read(min(len(b), 7))
        b[: len(data)] = data
        return len(data)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=700), chunk=st.sampled_from([1, 16, 64, 100]))
def test_roundtrip_any_size(data: bytes, chunk: int) -> None:
    blob = aead.seal(KEY, data, T, A, chunk_size=chunk)
    assert len(blob) == aead.ciphertext_length(len(data), chunk)
    assert aead.open(KEY, blob, T, A) == data
    out = io.BytesIO()
    stats = aead.encrypt_stream(KEY, io.BytesIO(data), out, T, A, chunk_size=chunk)
    assert stats.plaintext_length == len(data) and stats.ciphertext_length == len(out.getvalue())
    assert len(out.getvalue()) == len(blob)  # same layout, only the header length flag/salt differ
    back = io.BytesIO()
    aead.decrypt_stream(KEY, io.BytesIO(out.getvalue()), back, T, A)
    assert back.getvalue() == data
    back = io.BytesIO()
    aead.decrypt_stream(KEY, Trickle(blob), back, T, A)
    assert back.getvalue() == data


@pytest.mark.parametrize("n", [0, 1, C - 1, C, C + 1, 3 * C, 3 * C + 5])
def test_boundary_sizes(n: int) -> None:
    data = os.urandom(n)
    blob = aead.seal(KEY, data, T, A, chunk_size=C)
    assert len(_chunks(blob)[1]) == aead.chunk_count(n, C) == max(1, -(-n // C))
    assert aead.open(KEY, blob, T, A) == data
    out = io.BytesIO()
    aead.encrypt_stream(KEY, Trickle(data), out, T, A, chunk_size=C, length=n)
    assert aead.open(KEY, out.getvalue(), T, A) == data


def test_default_chunk_size_multi_chunk() -> None:
    data = os.urandom(2 * aead.DEFAULT_CHUNK_SIZE + 123)
    blob = aead.seal(KEY, data, T, A)
    assert aead.parse_header(blob).chunk_size == 4 * 1024 * 1024
    assert aead.open(KEY, blob, T, A) == data


def test_fresh_salt_per_stream() -> None:
    a, b = aead.seal(KEY, b"same", T, A), aead.seal(KEY, b"same", T, A)
    assert aead.parse_header(a).salt != aead.parse_header(b).salt
    assert a[aead.HEADER_LEN :] != b[aead.HEADER_LEN :]


# -- attacks ---------------------------------------------------------------------

DATA = os.urandom(5 * C + 10)  # 6 chunks, last one short


@pytest.fixture()
def blob() -> bytes:
    return aead.seal(KEY, DATA, T, A, chunk_size=C)


def test_truncate_at_chunk_boundary(blob: bytes) -> None:
    header, chunks = _chunks(blob)
    for keep in range(1, len(chunks)):
        cut = header + b"".join(chunks[:keep])
        _open_fails(cut)
    # With the plaintext-length header field gone (streamed without length), truncation
    # is still caught by the final-chunk flag.
    out = io.BytesIO()
    aead.encrypt_stream(KEY, io.BytesIO(DATA), out, T, A, chunk_size=C)
    header, chunks = _chunks(out.getvalue())
    assert aead.parse_header(header).plaintext_length is None
    _open_fails(header + b"".join(chunks[:3]), code="auth_failed")


def test_truncate_mid_chunk_and_header_only(blob: bytes) -> None:
    _open_fails(blob[:-1])
    _open_fails(blob[:-17])
    _open_fails(blob[: aead.HEADER_LEN], code="truncated")
    _open_fails(blob[:10], code="truncated")


def test_reorder_chunks(blob: bytes) -> None:
    header, chunks = _chunks(blob)
    swapped = chunks[:]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    _open_fails(header + b"".join(swapped), code="auth_failed")


def test_drop_chunk(blob: bytes) -> None:
    header, chunks = _chunks(blob)
    # Dropping a middle chunk and fixing the length field still fails (index in AAD).
    dropped = header + b"".join(chunks[:2] + chunks[3:])
    _open_fails(dropped)
    h = bytearray(header)
    struct.pack_into(">Q", h, 42, len(DATA) - C)
    _open_fails(bytes(h) + b"".join(chunks[:2] + chunks[3:]), code="auth_failed")


def test_duplicate_chunk(blob: bytes) -> None:
    header, chunks = _chunks(blob)
    _open_fails(header + b"".join(chunks[:2] + [chunks[1]] + chunks[2:]))


def test_append_chunk(blob: bytes) -> None:
    header, chunks = _chunks(blob)
    _open_fails(blob + chunks[0])
    _open_fails(blob + b"\x00")


@pytest.mark.parametrize("where", ["magic", "flags", "chunk_size", "salt", "length", "ct", "tag", "last"])
def test_flipped_byte(blob: bytes, where: str) -> None:
    offsets = {
        "magic": 0,
        "flags": 5,
        "chunk_size": 9,
        "salt": 20,
        "length": 49,
        "ct": aead.HEADER_LEN + 3,
        "tag": aead.HEADER_LEN + C + 2,
        "last": len(blob) - 1,
    }
    b = bytearray(blob)
    b[offsets[where]] ^= 0x01
    _open_fails(bytes(b))


def test_cross_tenant_and_wrong_artifact(blob: bytes) -> None:
    _open_fails(blob, code="auth_failed", tenant="tenant-b")
    _open_fails(blob, code="auth_failed", artifact="art-2")
    _open_fails(blob, code="auth_failed", key=bytes(32))


def test_splice_chunks_across_streams() -> None:
    """Chunks of another artifact / tenant / stream under the same key never fit."""
    mine = aead.seal(KEY, DATA, T, A, chunk_size=C)
    theirs = [
        aead.seal(KEY, DATA, "tenant-b", A, chunk_size=C),
        aead.seal(KEY, DATA, T, "art-2", chunk_size=C),
        aead.seal(KEY, DATA, T, A, chunk_size=C),  # same everything, new stream salt
    ]
    header, chunks = _chunks(mine)
    for other in theirs:
        oh, oc = _chunks(other)
        _open_fails(header + b"".join(chunks[:2] + [oc[2]] + chunks[3:]), code="auth_failed")
        _open_fails(oh + b"".join(chunks), code="auth_failed")  # header swap


def test_open_into_zeroes_output_on_failure(blob: bytes) -> None:
    b = bytearray(blob)
    b[-1] ^= 1  # last chunk fails after earlier chunks were decrypted
    out = bytearray(b"\xaa" * len(DATA))
    with pytest.raises(DecryptionError):
        aead.open_into(KEY, bytes(b), out, T, A)
    assert out == bytearray(len(DATA))


def test_decrypt_stream_emits_only_authenticated_chunks(blob: bytes) -> None:
    header, chunks = _chunks(blob)
    bad = bytearray(chunks[2])
    bad[0] ^= 1
    out = io.BytesIO()
    with pytest.raises(DecryptionError):
        aead.decrypt_stream(
            KEY, io.BytesIO(header + b"".join(chunks[:2]) + bytes(bad) + b"".join(chunks[3:])), out, T, A
        )
    assert out.getvalue() == DATA[: 2 * C]


def test_declared_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        aead.encrypt_stream(KEY, io.BytesIO(b"abc"), io.BytesIO(), T, A, chunk_size=C, length=4)


def test_seal_into_preallocated_buffer() -> None:
    data = os.urandom(10 * C + 1)
    out = bytearray(aead.ciphertext_length(len(data), C) + 7)
    n = aead.seal_into(KEY, data, out, T, A, chunk_size=C)
    assert n == len(out) - 7
    assert aead.open(KEY, bytes(out[:n]), T, A) == data
    with pytest.raises(ValueError):
        aead.seal_into(KEY, data, bytearray(10), T, A, chunk_size=C)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        aead.seal(b"short", b"x", T, A)
    with pytest.raises(ValueError):
        aead.seal(KEY, b"x", T, A, chunk_size=0)
    with pytest.raises(DecryptionError) as e:
        aead.open(KEY, b"XXXX" + bytes(100), T, A)
    assert e.value.code == "malformed"
    b = bytearray(aead.seal(KEY, b"x", T, A))
    b[4] = 9
    with pytest.raises(DecryptionError) as e:
        aead.open(KEY, bytes(b), T, A)
    assert e.value.code == "unsupported_version"
