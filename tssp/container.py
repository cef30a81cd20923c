"""The canonical stored-ZIP profile of TSSP (docs/TSSP_SPEC.md §1): writer and strict reader.

Why our own ~150 lines instead of ``zipfile``: ``zipfile`` happily reads archives with
prepended data, gaps between entries, local headers that disagree with the central
directory, duplicate names, comments and extra fields. Each of those is a byte a
verifier would ignore, i.e. a place to hide data or to make two tools see two
different packages. This reader accepts exactly one encoding per set of entries.

The reader does NOT check CRC-32 by itself: callers check it with
:meth:`Archive.check_crcs` after the cryptographic checks, so that a flipped data
byte surfaces as the precise ``digest_mismatch`` rather than a CRC error.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ContainerError

__all__ = ["MAX_ARCHIVE_BYTES", "MAX_ENTRIES", "Archive", "Entry", "read_archive", "write_archive"]

MAX_ENTRIES = 64
MAX_ARCHIVE_BYTES = 0xFFFFFFFF  # no ZIP64: every offset and size fits in 32 bits
NAME_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_EOCD_SIG = 0x06054B50
_VERSION_MADE_BY = 0x0314  # UNIX, spec 2.0: unzip then applies the mode in external attrs
_VERSION_NEEDED = 20
_FLAGS = 0
_METHOD_STORED = 0
_DOS_TIME = 0x0000
_DOS_DATE = 0x0021  # 1980-01-01: the earliest DOS date; fixed so output is deterministic
_EXTERNAL_ATTRS = 0o100644 << 16  # regular file, rw-r--r--

# Local header: sig, version needed, flags, method, time, date, crc, csize, usize, name len, extra len.
_LOCAL = struct.Struct("<IHHHHHIIIHH")
# Central header: sig, made by, needed, flags, method, time, date, crc, csize, usize,
# name len, extra len, comment len, disk start, internal attrs, external attrs, local offset.
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
# EOCD: sig, disk, cd disk, entries on disk, entries total, cd size, cd offset, comment len.
_EOCD = struct.Struct("<IHHHHIIH")


@dataclass(frozen=True)
class Entry:
    name: str
    data: memoryview
    crc32: int  # as recorded in the headers (checked by Archive.check_crcs)


@dataclass(frozen=True)
class Archive:
    entries: tuple[Entry, ...]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> memoryview | None:
        for e in self.entries:
            if e.name == name:
                return e.data
        return None

    def check_crcs(self) -> None:
        for e in self.entries:
            if zlib.crc32(e.data) != e.crc32:
                raise ContainerError(
                    f"CRC-32 of member {e.name!r} does not match its header",
                    code="bad_container",
                    file=e.name,
                )


def _check_name(name: str) -> bytes:
    raw = name.encode("ascii", "replace")
    if not NAME_RE.fullmatch(raw):
        raise ValueError(f"member name {name!r} is not allowed ([A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")
    return raw


def write_archive(entries: Sequence[tuple[str, bytes | bytearray | memoryview]]) -> bytes:
    """Encode entries, in the given order, in the canonical profile. Names must be unique."""
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate member names")
    out = bytearray()
    central = bytearray()
    for name, data in entries:
        raw = _check_name(name)
        mv = memoryview(data).cast("B")
        crc = zlib.crc32(mv)
        offset = len(out)
        size = len(mv)
        out += _LOCAL.pack(
            _LOCAL_SIG,
            _VERSION_NEEDED,
            _FLAGS,
            _METHOD_STORED,
            _DOS_TIME,
            _DOS_DATE,
            crc,
            size,
            size,
            len(raw),
            0,
        )
        out += raw
        out += mv
        central += _CENTRAL.pack(
            _CENTRAL_SIG, _VERSION_MADE_BY, _VERSION_NEEDED, _FLAGS, _METHOD_STORED, _DOS_TIME, _DOS_DATE,
            crc, size, size, len(raw), 0, 0, 0, 0, _EXTERNAL_ATTRS, offset,
        )  # fmt: skip
        central += raw
        if len(out) > MAX_ARCHIVE_BYTES:
            raise ValueError("archive would exceed 4 GiB (ZIP64 is not part of the profile)")
    cd_offset = len(out)
    out += central
    out += _EOCD.pack(_EOCD_SIG, 0, 0, len(entries), len(entries), len(central), cd_offset, 0)
    if len(out) > MAX_ARCHIVE_BYTES:
        raise ValueError("archive would exceed 4 GiB (ZIP64 is not part of the profile)")
    return bytes(out)


def _bad(msg: str) -> ContainerError:
    return ContainerError(msg, code="bad_container")


def read_archive(data: bytes | bytearray | memoryview) -> Archive:
    """Parse ``data`` strictly; raise ``ContainerError(bad_container)`` on any deviation."""
    buf = memoryview(data).cast("B")
    n = len(buf)
    if n < _EOCD.size:
        raise _bad(f"file is {n} bytes: too short for a ZIP end record")
    if n > MAX_ARCHIVE_BYTES:
        raise _bad("file exceeds 4 GiB (ZIP64 is not part of the profile)")
    sig, disk, cd_disk, on_disk, total, cd_size, cd_offset, comment = _EOCD.unpack_from(buf, n - _EOCD.size)
    if sig != _EOCD_SIG:
        raise _bad("no ZIP end-of-central-directory record in the last 22 bytes (trailing data or comment?)")
    if disk or cd_disk or comment or on_disk != total:
        raise _bad("ZIP end record: multi-disk fields or comment are not allowed")
    if not 1 <= total <= MAX_ENTRIES:
        raise _bad(f"ZIP end record: {total} entries (allowed 1..{MAX_ENTRIES})")
    if cd_offset + cd_size != n - _EOCD.size:
        raise _bad("ZIP end record: central directory does not end where the end record starts")

    entries: list[Entry] = []
    seen: set[str] = set()
    pos = cd_offset
    expect_local = 0  # local headers are contiguous from offset 0
    for i in range(total):
        if pos + _CENTRAL.size > cd_offset + cd_size:
            raise _bad(f"central directory entry {i} runs past the directory")
        (c_sig, made_by, needed, flags, method, mtime, mdate, crc, csize, usize, name_len, extra_len,
         comment_len, disk_start, internal, external, local_off) = _CENTRAL.unpack_from(buf, pos)  # fmt: skip
        if c_sig != _CENTRAL_SIG:
            raise _bad(f"central directory entry {i}: bad signature")
        if (made_by, needed, flags, method, mtime, mdate) != (
            _VERSION_MADE_BY, _VERSION_NEEDED, _FLAGS, _METHOD_STORED, _DOS_TIME, _DOS_DATE,
        ):  # fmt: skip
            raise _bad(f"central directory entry {i}: header fields are not the canonical values")
        if extra_len or comment_len or disk_start or internal or external != _EXTERNAL_ATTRS:
            raise _bad(f"central directory entry {i}: extra/comment/attribute fields are not canonical")
        if csize != usize:
            raise _bad(f"central directory entry {i}: stored entry with compressed size != size")
        name_raw = bytes(buf[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len])
        if len(name_raw) != name_len or not NAME_RE.fullmatch(name_raw):
            raise _bad(f"central directory entry {i}: member name not allowed")
        name = name_raw.decode("ascii")
        if name in seen:
            raise _bad(f"duplicate member name {name!r}")
        seen.add(name)
        pos += _CENTRAL.size + name_len

        if local_off != expect_local:
            raise _bad(f"member {name!r}: local header not where the previous member ended (gap or overlap)")
        if local_off + _LOCAL.size + name_len + csize > cd_offset:
            raise _bad(f"member {name!r}: data runs into the central directory")
        (l_sig, l_needed, l_flags, l_method, l_time, l_date, l_crc, l_csize, l_usize, l_name_len,
         l_extra_len) = _LOCAL.unpack_from(buf, local_off)  # fmt: skip
        if l_sig != _LOCAL_SIG:
            raise _bad(f"member {name!r}: bad local header signature")
        if (l_needed, l_flags, l_method, l_time, l_date, l_crc, l_csize, l_usize, l_name_len, l_extra_len) != (
            needed, flags, method, mtime, mdate, crc, csize, usize, name_len, 0,
        ):  # fmt: skip
            raise _bad(f"member {name!r}: local header disagrees with the central directory")
        start = local_off + _LOCAL.size
        if bytes(buf[start : start + name_len]) != name_raw:
            raise _bad(f"member {name!r}: local header name disagrees with the central directory")
        data_start = start + name_len
        entries.append(Entry(name, buf[data_start : data_start + csize], crc))
        expect_local = data_start + csize
    if pos != cd_offset + cd_size:
        raise _bad("central directory has trailing bytes")
    if expect_local != cd_offset:
        raise _bad("bytes between the last member and the central directory")
    return Archive(tuple(entries))
