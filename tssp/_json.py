"""Strict JSON in and canonical JSON out, shared by the manifest and recipients parsers."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

from tensafe.events.strict_json import StrictJSONError, exact_keys, loads

__all__ = ["StrictJSONError", "exact_keys", "loads", "dumps", "b64encode", "b64decode_strict", "is_int"]

HEX64_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{32}")


def dumps(obj: Any) -> bytes:
    """Canonical-enough JSON for signing: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode_strict(s: object, what: str) -> bytes:
    """Standard, padded base64 in its one canonical spelling (no whitespace, no stray bits)."""
    if not isinstance(s, str):
        raise StrictJSONError(f"{what}: expected a base64 string")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise StrictJSONError(f"{what}: not valid standard base64") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise StrictJSONError(f"{what}: non-canonical base64")
    return raw


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)) and math.isfinite(x)


def check(cond: bool, what: str, err: Callable[[str], Exception] = StrictJSONError) -> None:
    if not cond:
        raise err(what)
