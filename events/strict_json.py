"""Strict JSON parsing for signed documents (checkpoints, proofs, TSSP manifests).

One byte string must mean one document to every reader: UTF-8 only, no duplicate
keys (json.loads keeps the last one silently), no NaN/Infinity, finite numbers,
bounded integers, and objects with exactly the expected keys.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["StrictJSONError", "exact_keys", "loads"]


class StrictJSONError(ValueError):
    """Input is not JSON in the strict sense signed documents require."""


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
