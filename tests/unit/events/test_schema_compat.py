"""Every schema is registered in schemas/history and can read every earlier version of itself."""

from __future__ import annotations

import io
import random

import fastavro
import pytest
from fastavro.schema import parse_schema, to_parsing_canonical_form
from tensafe.events import codec
from tensafe.events.schema_compat import check_backward, current_schemas, history

CURRENT = current_schemas()
HISTORY = history()


def _canonical(s: dict) -> str:
    return to_parsing_canonical_form(parse_schema(s, _write_hint=False))


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_current_version_is_registered(name):
    versions = HISTORY.get(name)
    assert versions, f"{name} has no history: run scripts/snapshot_schemas.py"
    assert _canonical(versions[-1][1]) == _canonical(CURRENT[name]), (
        f"{name} changed since its last registered version: run scripts/snapshot_schemas.py"
    )


def _datum(t, rng: random.Random, names: dict):
    if isinstance(t, list):
        return _datum(rng.choice(t), rng, names)
    if isinstance(t, str):
        if t in names:
            return _datum(names[t], rng, names)
        return {
            "null": None,
            "boolean": True,
            "int": rng.randint(-99, 99),
            "long": rng.randint(-(10**12), 10**12),
            "float": 1.5,
            "double": 2.25,
            "string": f"s{rng.randint(0, 9)}",
            "bytes": b"\x00\x01",
        }[t]
    kind = t["type"]
    if kind in ("record", "fixed", "enum"):
        names[t["name"]] = t
        if t.get("namespace"):
            names[f"{t['namespace']}.{t['name']}"] = t
    if kind == "record":
        return {f["name"]: _datum(f["type"], rng, names) for f in t["fields"]}
    if kind == "fixed":
        return b"\x07" * t["size"]
    if kind == "enum":
        return t["symbols"][0]
    if kind == "array":
        return [_datum(t["items"], rng, names) for _ in range(2)]
    if kind == "map":
        return {"k": _datum(t["values"], rng, names)}
    return _datum(kind, rng, names)


@pytest.mark.parametrize("name", sorted(HISTORY))
def test_current_reads_every_earlier_version(name):
    current = CURRENT[name]
    for version, old in HISTORY[name][:-1]:
        assert check_backward(current, old) == [], f"{name} cannot read v{version}"
        datum = _datum(old, random.Random(version), {})
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parse_schema(old, _write_hint=False), datum)
        buf.seek(0)
        fastavro.schemaless_reader(
            buf, parse_schema(old, _write_hint=False), parse_schema(current, _write_hint=False)
        )


def test_checker_catches_breaking_changes():
    v1 = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "int"}]}
    added_with_default = {
        "type": "record",
        "name": "E",
        "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "string", "default": ""}],
    }
    added_without_default = {
        "type": "record",
        "name": "E",
        "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "string"}],
    }
    narrowed = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "string"}]}
    assert check_backward(added_with_default, v1) == []
    assert "new field without a default" in check_backward(added_without_default, v1)[0]
    assert "cannot be read as" in check_backward(narrowed, v1)[0]


def test_old_fingerprints_still_decode():
    # every registered version's fingerprint is known to the codec
    for name, versions in HISTORY.items():
        for _, old in versions:
            fp = codec.rabin_fingerprint(_canonical(old).encode()).to_bytes(8, "little")
            assert fp in codec.registry().by_fingerprint, name
