"""Strict JSON in and canonical JSON out, shared by the manifest and recipients parsers."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

HEX64_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{32}")


class StrictJSONError(ValueError):
    """Input is not JSON in the strict sense TSSP requires."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last duplicate silently; two readers could then see two documents.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise StrictJSONError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise StrictJSONError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise StrictJSONError(f"number {text[:40]} is not finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 40:  # far beyond any legitimate field; also avoids slow bigint parsing
        raise StrictJSONError("integer too long")
    return int(text)


def loads(data: bytes | bytearray | memoryview | str, what: str) -> Any:
    """Parse strictly: UTF-8 only, no duplicate keys, no NaN/Infinity, finite numbers."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except StrictJSONError as exc:
        raise StrictJSONError(f"{what}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise StrictJSONError(f"{what}: not valid JSON ({type(exc).__name__})") from None


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


def exact_keys(
    obj: object, required: set[str], what: str, optional: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise StrictJSONError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    missing = required - obj.keys()
    extra = obj.keys() - required - optional
    if missing or extra:
        raise StrictJSONError(f"{what}: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
    return obj


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)) and math.isfinite(x)


def check(cond: bool, what: str, err: Callable[[str], Exception] = StrictJSONError) -> None:
    if not cond:
        raise err(what)
