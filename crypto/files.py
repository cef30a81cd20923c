"""Small durable files shared by several processes (keyring, KEK store, tenant store).

One pattern, one place: a thread mutex plus an inter-process ``flock`` around every
read-modify-write, a cheap change signature so readers reload only when another
process committed, and crash-safe atomic replacement.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._util import atomic_write, fsync_dir

__all__ = ["atomic_write", "exclusive_lock", "file_signature", "fsync_dir"]


@contextmanager
def exclusive_lock(lock_path: str | os.PathLike[str], mutex: threading.RLock) -> Iterator[None]:
    """Thread mutex + inter-process flock on ``lock_path`` (created 0600 if missing)."""
    with mutex:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def file_signature(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size): changes whenever another process replaces the file."""
    try:
        st = os.stat(Path(path))
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
