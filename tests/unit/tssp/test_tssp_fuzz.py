"""Every region of a package, byte by byte: a flipped byte is always refused with a precise
code, never accepted and never answered with an exception other than PackageError.

A full package is ~60 KB and a refusal costs ~1.5 ms, so flipping all of it would take
~90 s on the CI machines. Instead: EVERY byte of the ZIP structure (local headers,
central directory, end record), of the JSON structure and key ids of the envelope, of
the AEAD header and final tag of weights.enc, the first and last 64 bytes of every
member's data, and a dense stride (random offset, ~1 byte in 7-29) through the big
base64 and ciphertext bodies: ~3,900 flips in total, with four different bit masks.
Set TSSP_FUZZ_ALL=1 to flip every single byte instead (~60,000 flips, ~2 minutes).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest
from tensafe.tssp import PackageError, inspect_package, verify_package
from tensafe.tssp.manifest import MANIFEST_NAME, RECIPIENTS_NAME, WEIGHTS_NAME
from tssp_helpers import Keys, assemble, members_of, regions

MASKS = (0x01, 0x80, 0xFF, 0x20)
MANIFEST_CODES = {"bad_manifest", "bad_signature", "untrusted_signer"}


def _spans(data: bytes, key: bytes) -> list[tuple[int, int]]:
    """[start, end) of every JSON string value following ``key`` (e.g. b'"sig":"')."""
    out, pos = [], 0
    while (i := data.find(key, pos)) != -1:
        start = i + len(key)
        end = data.index(b'"', start)
        out.append((start, end))
        pos = end
    return out


def _label_every_byte(pkg: bytes) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for start, end, label in regions(pkg):
        if label == MANIFEST_NAME:
            data = pkg[start:end]
            big = _spans(data, b'"payload":"') + _spans(data, b'"sig":"')
            keyids = _spans(data, b'"keyid":"')
            for i in range(len(data)):
                if any(s <= i < e for s, e in keyids):
                    out.append((start + i, "manifest.keyid"))
                elif any(s <= i < e for s, e in big):
                    out.append((start + i, "manifest.b64"))
                else:
                    out.append((start + i, label))
        else:
            out.extend((i, label) for i in range(start, end))
    return out


def _positions(pkg: bytes) -> list[tuple[int, str]]:
    if os.environ.get("TSSP_FUZZ_ALL") == "1":
        return _label_every_byte(pkg)
    rng = random.Random(20240601)
    picks: dict[int, str] = {}

    def add(i: int, label: str) -> None:
        picks.setdefault(i, label)

    for start, end, label in regions(pkg):
        if label == "zip":
            for i in range(start, end):
                add(i, "zip")
            continue
        data = pkg[start:end]
        for i in list(range(start, min(end, start + 64))) + list(range(max(start, end - 64), end)):
            add(i, label)
        if label == MANIFEST_NAME:
            big = _spans(data, b'"payload":"') + _spans(data, b'"sig":"')
            keyids = _spans(data, b'"keyid":"')
            for s, e in keyids:
                for i in range(s, e):
                    add(start + i, "manifest.keyid")
            for i in range(len(data)):  # JSON structure: every byte outside the two big strings
                if not any(s <= i < e for s, e in big):
                    add(start + i, label)
            for s, e in big:
                stride = 29 if e - s > 10_000 else 11
                for i in range(s + rng.randrange(stride), e, stride):
                    add(start + i, "manifest.b64")
        elif label == WEIGHTS_NAME:
            for i in range(start, start + 50):  # AEAD stream header
                add(i, label)
            for i in range(start + rng.randrange(17), end, 17):
                add(i, label)
        else:
            for i in range(start + rng.randrange(7), end, 7):
                add(i, label)
    return sorted(picks.items())


def test_every_region_byte_flip_is_refused_precisely(package_bytes: bytes, keys: Keys) -> None:
    positions = _positions(package_bytes)
    assert len(positions) > 3000
    seen: Counter[tuple[str, str]] = Counter()
    buf = bytearray(package_bytes)
    for n, (i, label) in enumerate(positions):
        buf[i] ^= MASKS[n % len(MASKS)]
        try:
            verify_package(bytes(buf), keys.trusted)
        except PackageError as exc:
            code = exc.code
        except Exception as exc:  # pragma: no cover - the assertion below names it
            pytest.fail(f"byte {i} ({label}): {type(exc).__name__}: {exc}")
        else:
            pytest.fail(f"byte {i} ({label}) flipped and the package was ACCEPTED")
        finally:
            buf[i] = package_bytes[i]
        seen[(label, code)] += 1
        if label == "zip":
            assert code == "bad_container", (i, code)
        elif label in (RECIPIENTS_NAME, WEIGHTS_NAME):
            assert code == "digest_mismatch", (i, label, code)
        elif label == "manifest.keyid":
            assert code in {"untrusted_signer", "bad_manifest"}, (i, code)
        elif label == "manifest.b64":
            assert code in {"bad_signature", "bad_manifest"}, (i, code)
        else:
            assert code in MANIFEST_CODES, (i, label, code)
    # Every region was exercised, and each kind of damage got its own code.
    labels = {label for label, _ in seen}
    assert labels == {"zip", MANIFEST_NAME, "manifest.keyid", "manifest.b64", RECIPIENTS_NAME, WEIGHTS_NAME}
    codes = {code for _, code in seen}
    assert {"bad_container", "bad_manifest", "bad_signature", "untrusted_signer", "digest_mismatch"} <= codes


def test_truncation_and_extension_are_refused(package_bytes: bytes, keys: Keys) -> None:
    n = len(package_bytes)
    cuts = sorted(set(range(0, n, 211)) | set(range(max(0, n - 64), n)))
    for cut in cuts:
        with pytest.raises(PackageError) as ei:
            verify_package(package_bytes[:cut], keys.trusted)
        assert ei.value.code == "bad_container"
    for extra in (b"\x00", b"PK\x05\x06" + bytes(18), package_bytes[-22:]):
        with pytest.raises(PackageError) as ei:
            verify_package(package_bytes + extra, keys.trusted)
        assert ei.value.code == "bad_container"
        with pytest.raises(PackageError) as ei:
            verify_package(extra + package_bytes, keys.trusted)
        assert ei.value.code == "bad_container"


def test_random_garbage_is_refused(keys: Keys) -> None:
    rng = random.Random(7)
    for size in (0, 1, 21, 22, 23, 100, 4096):
        blob = bytes(rng.randrange(256) for _ in range(size))
        with pytest.raises(PackageError):
            verify_package(blob, keys.trusted)


def test_inspect_never_raises_anything_but_package_error(package_bytes: bytes) -> None:
    buf = bytearray(package_bytes)
    for n, (i, _label) in enumerate(_positions(package_bytes)[::3]):
        buf[i] ^= MASKS[n % len(MASKS)]
        try:
            info = inspect_package(bytes(buf))
            assert info["signature_verified"] is False
        except PackageError:
            pass
        finally:
            buf[i] = package_bytes[i]


def test_envelope_is_not_malleable(package_bytes: bytes, keys: Keys) -> None:
    m = members_of(package_bytes)
    env = json.loads(m[MANIFEST_NAME])
    variants = (
        json.dumps(env, sort_keys=True).encode(),  # whitespace after separators
        json.dumps(dict(reversed(list(env.items()))), separators=(",", ":")).encode(),  # key order
        m[MANIFEST_NAME] + b"\n",  # trailing newline
    )
    for variant in variants:
        with pytest.raises(PackageError) as ei:
            verify_package(assemble({**m, MANIFEST_NAME: variant}), keys.trusted)
        assert ei.value.code == "bad_manifest"
