"""The canonical stored-ZIP profile: round trip, interoperability, and strictness."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from tensafe.tssp.container import read_archive, write_archive
from tensafe.tssp.errors import ContainerError, PackageError

ENTRIES = [
    ("manifest.dsse.json", b'{"a":1}'),
    ("recipients.json", b"r" * 100),
    ("weights.enc", bytes(range(256)) * 3),
]


def test_round_trip_and_determinism() -> None:
    blob = write_archive(ENTRIES)
    assert blob == write_archive(ENTRIES)  # deterministic: no clocks, no randomness
    a = read_archive(blob)
    assert [(e.name, bytes(e.data)) for e in a.entries] == ENTRIES
    a.check_crcs()


def test_python_zipfile_reads_it_with_fixed_metadata() -> None:
    blob = write_archive(ENTRIES)
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [i.filename for i in infos] == [n for n, _ in ENTRIES]
        for info, (_, data) in zip(infos, ENTRIES, strict=True):
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == 0o100644
            assert zf.read(info) == data


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip not installed")
def test_unzip_tool_accepts_it(tmp_path: Path) -> None:
    path = tmp_path / "p.tssp"
    path.write_bytes(write_archive(ENTRIES))
    out = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No errors detected" in out.stdout


def _zipfile_archive(**kw: object) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in ENTRIES:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        if "comment" in kw:
            zf.comment = kw["comment"]  # type: ignore[assignment]
    return buf.getvalue()


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b: b"\x00" + b, id="prepended-byte"),
        pytest.param(lambda b: b + b"\x00", id="trailing-byte"),
        pytest.param(lambda b: b[:-1], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b"PK\x05\x06" + bytes(18), id="empty-archive"),
    ],
)
def test_rejects_non_canonical_framing(mutate) -> None:
    with pytest.raises(ContainerError) as ei:
        read_archive(mutate(write_archive(ENTRIES)))
    assert ei.value.code == "bad_container"


def test_rejects_other_zip_writers_output() -> None:
    # A valid ZIP that is not in the profile (zipfile's own header values) is refused.
    with pytest.raises(ContainerError):
        read_archive(_zipfile_archive())
    with pytest.raises(ContainerError):
        read_archive(_zipfile_archive(comment=b"hidden"))


def test_rejects_duplicate_names_and_bad_names() -> None:
    with pytest.raises(ValueError):
        write_archive([("a", b"1"), ("a", b"2")])
    for bad in ("../x", "a/b", ".hidden", "", "x" * 200, "sp ace"):
        with pytest.raises(ValueError):
            write_archive([(bad, b"1")])
    # Forge a duplicate by renaming the second entry in both headers.
    blob = bytearray(write_archive([("aa", b"1"), ("ab", b"2")]))
    first = blob.find(b"ab")
    while first != -1:
        blob[first : first + 2] = b"aa"
        first = blob.find(b"ab")
    with pytest.raises(ContainerError, match="duplicate"):
        read_archive(bytes(blob))


def test_rejects_local_header_disagreeing_with_directory() -> None:
    blob = bytearray(write_archive(ENTRIES))
    # Local header of entry 0: make the recorded CRC differ from the central directory's.
    crc = struct.unpack_from("<I", blob, 14)[0]
    struct.pack_into("<I", blob, 14, crc ^ 1)
    with pytest.raises(ContainerError, match="disagrees"):
        read_archive(bytes(blob))


def test_crc_is_checked_separately() -> None:
    blob = bytearray(write_archive(ENTRIES))
    start = 30 + len(ENTRIES[0][0])
    blob[start] ^= 0xFF  # data byte: structure fine, CRC wrong
    a = read_archive(bytes(blob))
    with pytest.raises(ContainerError) as ei:
        a.check_crcs()
    assert ei.value.file == "manifest.dsse.json"
    assert isinstance(ei.value, PackageError)
