"""Small shared helpers: backend feature checks, length-prefixed encodings, atomic files."""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from pathlib import Path

from cryptography.hazmat.backends.openssl.backend import backend as _ossl

from .errors import BackendUnavailable

_REINSTALL_HINT = (
    "install the binary wheel (pip install -c constraints.txt --only-binary=cryptography "
    "'cryptography>=48'); a cryptography built from source against an OpenSSL older than "
    "3.5 has no ML-DSA/ML-KEM"
)


def require(feature: str) -> None:
    """Raise BackendUnavailable unless the OpenSSL backend supports ``feature``.

    Checked at import time of the modules that need it, so a broken install
    fails loudly at start-up instead of at the first signature.
    """
    import cryptography

    checks = {
        "mldsa": _ossl.mldsa_supported,
        "mlkem": _ossl.mlkem_supported,
        "argon2": _ossl.argon2_supported,
    }
    if not checks[feature]():
        raise BackendUnavailable(
            f"cryptography {cryptography.__version__} (OpenSSL {_ossl.openssl_version_text()}) "
            f"does not support {feature}: {_REINSTALL_HINT}",
            code=f"{feature}_unsupported",
        )


def lp(data: bytes) -> bytes:
    """u32 big-endian length prefix + data: makes concatenated AAD/info fields unambiguous."""
    return struct.pack(">I", len(data)) + data


def lp_str(s: str) -> bytes:
    return lp(s.encode("utf-8"))


def key_id_of(public_bytes: bytes) -> str:
    """Hex of the first 16 bytes of SHA-256(public key bytes) (CONTRACTS.md)."""
    return hashlib.sha256(public_bytes).digest()[:16].hex()


def atomic_write(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, mode: int = 0o600
) -> None:
    """Write ``data`` to ``path`` so that a crash (even kill -9) leaves the old or the new file.

    temp file in the same directory -> write -> fsync -> rename over the target
    -> fsync the directory (so the rename itself is durable).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
