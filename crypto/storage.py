"""Object storage backends for the encrypted artifact store.

Backends only ever see ciphertext. Keys are ``/``-separated relative names
(``t-<tenant hash>/<artifact id>.bin``). Every write is atomic: readers see the
old object or the complete new one, never a partial object.

``LocalDirBackend`` lives here; ``S3Backend`` (S3-compatible, e.g. SeaweedFS)
is in ``tensafe.crypto.s3``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from ._util import atomic_write, fsync_dir

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_key(key: str) -> list[str]:
    """Reject keys that could escape the root (``..``, absolute paths, odd characters)."""
    parts = key.split("/")
    if not parts or any(not _SEGMENT.match(p) for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return parts


@runtime_checkable
class StorageBackend(Protocol):
    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``key`` atomically (replacing any previous object)."""
        ...

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A writable file; committed atomically on clean exit, discarded on exception."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Whole object; FileNotFoundError if absent."""
        ...

    def reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Readable stream of the object; FileNotFoundError if absent."""
        ...

    def delete(self, key: str) -> bool:
        """Remove; True if something was deleted."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (sorted)."""
        ...


class LocalDirBackend:
    """Objects as files under ``root`` (one subdirectory per tenant, mode 0700)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, data)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        f = open(tmp, "xb")  # noqa: SIM115 - closed below on every path
        try:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        with open(self._path(key), "rb") as f:
            yield f

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def list(self, prefix: str) -> list[str]:
        # Prefixes used by the store are "<dir>/" or "<dir>/<name-prefix>".
        head, _, name_prefix = prefix.rpartition("/")
        base = self._path(head) if head else self.root
        if not base.is_dir():
            return []
        out = []
        for p in base.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.name.startswith(name_prefix):
                out.append(f"{head}/{p.name}" if head else p.name)
        return sorted(out)


__all__ = ["LocalDirBackend", "StorageBackend", "check_key"]
