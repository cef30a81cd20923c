"""Streaming AES-256-GCM for artifacts of any size (chunked, truncation-proof).

Design (close to Tink's AES-GCM-HKDF streaming AEAD):

* Per stream a fresh random 32-byte ``salt`` goes into the header and the
  stream key is ``K_s = HKDF-SHA256(ikm=key, salt=salt, info=b"tensafe/aead-stream/v1")``.
  Every artifact is therefore encrypted under its own subkey, so the usual GCM
  limits (2^32 random nonces per key) apply per artifact, not per DEK.
* Chunk ``i`` (0-based) uses nonce ``0x00000000 || u64_be(i)``: unique by
  construction under ``K_s`` (a counter, never random).
* Associated data of chunk ``i``::

      header (50 B) || u32 len(tenant) || tenant || u32 len(artifact) || artifact
                    || u64_be(i) || final (1 byte: 0x01 on the last chunk, else 0x00)

  Binding the index stops reordering, dropping and duplicating chunks; the
  final flag stops truncation at a chunk boundary (the new last chunk was
  sealed with final=0) and appending; tenant/artifact stop splicing chunks or
  whole streams across tenants/artifacts; the header is authenticated as part
  of every chunk.

Header (50 bytes, big-endian)::

    magic "TSAE" (4) | version 0x01 (1) | flags (1; bit0 = plaintext length present)
    | chunk_size (u32, plaintext bytes per chunk) | salt (32) | plaintext_length (u64, 0 if absent)

Body: ``ceil(n / chunk_size)`` chunks (one empty chunk when n == 0), each
``ciphertext || 16-byte tag``; all chunks but the last hold exactly chunk_size
plaintext bytes. Total size = 50 + n + 16 * chunks.

Fast path: chunks are encrypted with ``Cipher(AES, GCM).encryptor().update_into``
straight into a preallocated buffer (``seal_into``), which runs near memcpy
speed; the one-shot ``AESGCM.encrypt`` allocates per call and is ~10x slower on
big buffers and refuses >= 2 GiB.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._util import lp_str
from .errors import DecryptionError

MAGIC = b"TSAE"
VERSION = 1
FLAG_LENGTH = 0x01
_HEADER = struct.Struct(">4sBBI32sQ")
HEADER_LEN = _HEADER.size  # 50
SALT_LEN = 32
TAG_LEN = 16
KEY_LEN = 32
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 1 << 30
_HKDF_INFO = b"tensafe/aead-stream/v1"
_NONCE_PAD = b"\x00\x00\x00\x00"


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


@dataclass(frozen=True)
class StreamHeader:
    version: int
    flags: int
    chunk_size: int
    salt: bytes
    plaintext_length: int | None
    raw: bytes


@dataclass(frozen=True)
class StreamStats:
    plaintext_length: int
    ciphertext_length: int
    chunks: int


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError("AES-256-GCM key must be 32 bytes")


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}]")


def _stream_key(key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=_HKDF_INFO).derive(bytes(key))


def _make_header(chunk_size: int, salt: bytes, length: int | None) -> bytes:
    flags = FLAG_LENGTH if length is not None else 0
    return _HEADER.pack(MAGIC, VERSION, flags, chunk_size, salt, length or 0)


def parse_header(data: bytes | memoryview) -> StreamHeader:
    """Parse (not authenticate: that happens with each chunk) the 50-byte stream header."""
    if len(data) < HEADER_LEN:
        raise DecryptionError("ciphertext shorter than the stream header", code="truncated")
    raw = bytes(data[:HEADER_LEN])
    magic, version, flags, chunk_size, salt, length = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise DecryptionError("not a TenSafe AEAD stream (bad magic)", code="malformed")
    if version != VERSION:
        raise DecryptionError(f"unsupported AEAD stream version {version}", code="unsupported_version")
    if flags & ~FLAG_LENGTH or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptionError("malformed AEAD stream header", code="malformed")
    return StreamHeader(version, flags, chunk_size, salt, length if flags & FLAG_LENGTH else None, raw)


def _aad_prefix(header: bytes, tenant_id: str, artifact_id: str) -> bytes:
    return header + lp_str(tenant_id) + lp_str(artifact_id)


def _nonce(index: int) -> bytes:
    return _NONCE_PAD + index.to_bytes(8, "big")


def _chunk_aad(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def chunk_count(plaintext_length: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    _check_chunk_size(chunk_size)
    return max(1, math.ceil(plaintext_length / chunk_size))


def ciphertext_length(plaintext_length: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Exact sealed size, for preallocating the output of ``seal_into``."""
    return HEADER_LEN + plaintext_length + TAG_LEN * chunk_count(plaintext_length, chunk_size)


def _encrypt_chunk(
    sk: bytes, prefix: bytes, index: int, final: bool, src: memoryview, dst: memoryview
) -> None:
    """Encrypt src into dst[:len(src)] and put the tag at dst[len(src):len(src)+16]."""
    enc = Cipher(algorithms.AES(sk), modes.GCM(_nonce(index))).encryptor()
    enc.authenticate_additional_data(_chunk_aad(prefix, index, final))
    n = len(src)
    if n:
        enc.update_into(src, dst[:n])
    enc.finalize()
    dst[n : n + TAG_LEN] = enc.tag


def _decrypt_chunk(
    sk: bytes, prefix: bytes, index: int, final: bool, src: memoryview, dst: memoryview
) -> int:
    """Decrypt one ``ct || tag`` chunk into dst; on failure dst's touched bytes are zeroed."""
    n = len(src) - TAG_LEN
    if n < 0:
        raise DecryptionError(f"chunk {index} shorter than its tag", code="truncated")
    dec = Cipher(algorithms.AES(sk), modes.GCM(_nonce(index), bytes(src[n:]))).decryptor()
    dec.authenticate_additional_data(_chunk_aad(prefix, index, final))
    try:
        if n:
            dec.update_into(src[:n], dst[:n])
        dec.finalize()
    except InvalidTag:
        # GCM writes plaintext before the tag is checked: never leave it behind.
        dst[:n] = bytes(n)
        raise DecryptionError(
            f"chunk {index} failed authentication (tampered, truncated, reordered, wrong key, "
            "or wrong tenant/artifact)",
            code="auth_failed",
        ) from None
    return n


# ---------------------------------------------------------------------------
# In-memory API
# ---------------------------------------------------------------------------


def seal_into(
    key: bytes,
    plaintext: bytes | bytearray | memoryview,
    out: bytearray | memoryview,
    tenant_id: str,
    artifact_id: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Encrypt into a caller-provided buffer (no allocation); returns bytes written.

    ``out`` must be writable with ``len(out) >= ciphertext_length(len(plaintext), chunk_size)``.
    """
    _check_key(key)
    _check_chunk_size(chunk_size)
    src = memoryview(plaintext).cast("B")
    dst = memoryview(out).cast("B")
    n = len(src)
    total = ciphertext_length(n, chunk_size)
    if len(dst) < total:
        raise ValueError(f"output buffer too small: need {total} bytes, got {len(dst)}")
    salt = os.urandom(SALT_LEN)
    header = _make_header(chunk_size, salt, n)
    dst[:HEADER_LEN] = header
    sk = _stream_key(key, salt)
    prefix = _aad_prefix(header, tenant_id, artifact_id)
    chunks = chunk_count(n, chunk_size)
    off = HEADER_LEN
    for i in range(chunks):
        part = src[i * chunk_size : (i + 1) * chunk_size]
        _encrypt_chunk(sk, prefix, i, i == chunks - 1, part, dst[off : off + len(part) + TAG_LEN])
        off += len(part) + TAG_LEN
    return off


def seal(
    key: bytes,
    plaintext: bytes | bytearray | memoryview,
    tenant_id: str,
    artifact_id: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> bytes:
    """Encrypt a whole buffer; returns the stream (header + chunks) as bytes."""
    out = bytearray(ciphertext_length(memoryview(plaintext).nbytes, chunk_size))
    seal_into(key, plaintext, out, tenant_id, artifact_id, chunk_size=chunk_size)
    return bytes(out)


def _plan(blob_len: int, header: StreamHeader) -> tuple[int, int]:
    """(chunks, plaintext length) implied by the ciphertext length; raises on impossible sizes."""
    body = blob_len - HEADER_LEN
    if body < TAG_LEN:
        raise DecryptionError("stream has no chunks (truncated after the header)", code="truncated")
    step = header.chunk_size + TAG_LEN
    chunks = math.ceil(body / step)
    plain = body - TAG_LEN * chunks
    if header.plaintext_length is not None and header.plaintext_length != plain:
        code = "truncated" if plain < header.plaintext_length else "trailing_data"
        raise DecryptionError(
            f"ciphertext holds {plain} plaintext bytes, header says {header.plaintext_length}", code=code
        )
    return chunks, plain


def plaintext_length(blob: bytes | bytearray | memoryview) -> int:
    """Plaintext size implied by a sealed blob (for preallocating ``open_into``'s output)."""
    mv = memoryview(blob).cast("B")
    return _plan(len(mv), parse_header(mv))[1]


def open_into(
    key: bytes,
    blob: bytes | bytearray | memoryview,
    out: bytearray | memoryview,
    tenant_id: str,
    artifact_id: str,
) -> int:
    """Decrypt into a caller buffer; returns plaintext length. On failure ``out`` is zeroed."""
    _check_key(key)
    src = memoryview(blob).cast("B")
    dst = memoryview(out).cast("B")
    header = parse_header(src)
    chunks, plain = _plan(len(src), header)
    if len(dst) < plain:
        raise ValueError(f"output buffer too small: need {plain} bytes, got {len(dst)}")
    sk = _stream_key(key, header.salt)
    prefix = _aad_prefix(header.raw, tenant_id, artifact_id)
    step = header.chunk_size + TAG_LEN
    written = 0
    try:
        for i in range(chunks):
            start = HEADER_LEN + i * step
            chunk = src[start : start + step]
            written += _decrypt_chunk(sk, prefix, i, i == chunks - 1, chunk, dst[written:])
    except DecryptionError:
        dst[:written] = bytes(written)
        raise
    return written


# Named like the seal/open pair of NaCl-style APIs; shadows the builtin only inside this module.
def open(
    key: bytes,
    blob: bytes | bytearray | memoryview,
    tenant_id: str,
    artifact_id: str,
) -> bytes:
    """Decrypt and authenticate a whole sealed stream; raises DecryptionError on any tampering."""
    out = bytearray(plaintext_length(blob))
    open_into(key, blob, out, tenant_id, artifact_id)
    return bytes(out)


# ---------------------------------------------------------------------------
# Streaming API (file-like reader/writer; constant memory: 2 chunks + 1 output chunk)
# ---------------------------------------------------------------------------


def _fill(reader: Reader, buf: memoryview) -> int:
    """Read until buf is full or EOF; tolerates short reads (pipes, sockets, HTTP bodies)."""
    got = 0
    readinto = getattr(reader, "readinto", None)
    while got < len(buf):
        if readinto is not None:
            n = readinto(buf[got:])
        else:
            data = reader.read(len(buf) - got)
            n = len(data) if data else 0
            buf[got : got + n] = data or b""
        if not n:
            break
        got += n
    return got


def encrypt_stream(
    key: bytes,
    reader: Reader,
    writer: Writer,
    tenant_id: str,
    artifact_id: str,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    length: int | None = None,
) -> StreamStats:
    """Encrypt everything ``reader`` yields into ``writer``.

    ``length`` (optional) is recorded in the authenticated header; if given, the
    reader must yield exactly that many bytes (ValueError otherwise, after which
    the caller must discard what was written). ``writer.write`` must consume its
    argument before returning (the buffer is reused), as files and hashers do.
    """
    _check_key(key)
    _check_chunk_size(chunk_size)
    salt = os.urandom(SALT_LEN)
    header = _make_header(chunk_size, salt, length)
    writer.write(header)
    sk = _stream_key(key, salt)
    prefix = _aad_prefix(header, tenant_id, artifact_id)
    cur, nxt = memoryview(bytearray(chunk_size)), memoryview(bytearray(chunk_size))
    out = memoryview(bytearray(chunk_size + TAG_LEN))
    n_cur = _fill(reader, cur)
    index = total = 0
    written = HEADER_LEN
    while True:
        # Look one chunk ahead: the current chunk is final iff nothing follows it.
        n_nxt = _fill(reader, nxt) if n_cur == chunk_size else 0
        final = n_nxt == 0
        _encrypt_chunk(sk, prefix, index, final, cur[:n_cur], out)
        writer.write(out[: n_cur + TAG_LEN])
        written += n_cur + TAG_LEN
        total += n_cur
        index += 1
        if final:
            break
        cur, nxt, n_cur = nxt, cur, n_nxt
    if length is not None and total != length:
        raise ValueError(f"reader yielded {total} bytes, but length={length} was declared")
    return StreamStats(total, written, index)


def decrypt_stream(
    key: bytes,
    reader: Reader,
    writer: Writer,
    tenant_id: str,
    artifact_id: str,
) -> StreamStats:
    """Decrypt a stream; only authenticated chunks reach ``writer``.

    If it raises, chunks already written were authentic but the stream as a
    whole was not (e.g. truncated): the caller must discard the output.
    """
    _check_key(key)
    hbuf = memoryview(bytearray(HEADER_LEN))
    header = parse_header(hbuf[: _fill(reader, hbuf)])
    sk = _stream_key(key, header.salt)
    prefix = _aad_prefix(header.raw, tenant_id, artifact_id)
    step = header.chunk_size + TAG_LEN
    cur, nxt = memoryview(bytearray(step)), memoryview(bytearray(step))
    out = memoryview(bytearray(header.chunk_size))
    n_cur = _fill(reader, cur)
    if n_cur < TAG_LEN:
        raise DecryptionError("stream has no complete chunk after the header", code="truncated")
    index = total = 0
    consumed = HEADER_LEN
    while True:
        n_nxt = _fill(reader, nxt) if n_cur == step else 0
        final = n_nxt == 0
        n = _decrypt_chunk(sk, prefix, index, final, cur[:n_cur], out)
        writer.write(out[:n])
        total += n
        consumed += n_cur
        index += 1
        if final:
            break
        cur, nxt, n_cur = nxt, cur, n_nxt
    if header.plaintext_length is not None and header.plaintext_length != total:
        # Cannot happen without a forged header (the header is in every chunk's AAD); kept as a guard.
        raise DecryptionError(
            "plaintext length differs from the authenticated header", code="length_mismatch"
        )
    return StreamStats(total, consumed, index)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_LEN",
    "StreamHeader",
    "StreamStats",
    "ciphertext_length",
    "decrypt_stream",
    "encrypt_stream",
    "open",
    "open_into",
    "parse_header",
    "plaintext_length",
    "seal",
    "seal_into",
]
