"""Backward compatibility of Avro schemas: can a reader with the new schema read data
written with the old one? (Avro 1.11 "Schema Resolution".)

Every released version of a schema is kept in ``schemas/history/<full name>.v<N>.avsc``
(``scripts/snapshot_schemas.py`` adds one when a schema changes); a test checks that
the current schema is registered there and can read every earlier version.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _norm(t, names: dict):
    if isinstance(t, str):
        return names.get(t, t) if t not in PRIMITIVES else t
    if isinstance(t, dict) and t.get("type") in ("record", "enum", "fixed"):
        names[t["name"]] = t
        ns = t.get("namespace")
        if ns:
            names[f"{ns}.{t['name']}"] = t
    return t


def _type_name(t) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return "union"
    return t["type"]


def _match(writer, reader, path: str, wn: dict, rn: dict) -> list[str]:
    writer, reader = _norm(writer, wn), _norm(reader, rn)
    if isinstance(writer, list):  # every writer branch must resolve
        return [p for i, w in enumerate(writer) for p in _match(w, reader, f"{path}<union {i}>", wn, rn)]
    if isinstance(reader, list):  # some reader branch must accept the writer
        for r in reader:
            if not _match(writer, r, path, dict(wn), dict(rn)):
                return []
        return [f"{path}: writer type {_type_name(writer)} matches no branch of the reader union"]
    wt, rt = _type_name(writer), _type_name(reader)
    if wt in PRIMITIVES or rt in PRIMITIVES:
        if wt in PRIMITIVES and rt in PROMOTIONS.get(wt, {wt}):
            return []
        return [f"{path}: {wt} cannot be read as {rt}"]
    if wt != rt:
        return [f"{path}: {wt} cannot be read as {rt}"]
    if wt == "fixed":
        if writer["size"] != reader["size"] or writer["name"] != reader["name"]:
            return [f"{path}: fixed {writer['name']}({writer['size']}) vs {reader['name']}({reader['size']})"]
        return []
    if wt == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{path}: enum symbols {sorted(missing)} unknown to the reader"]
        return []
    if wt == "array":
        return _match(writer["items"], reader["items"], path + "[]", wn, rn)
    if wt == "map":
        return _match(writer["values"], reader["values"], path + "{}", wn, rn)
    if wt == "record":
        problems = []
        if writer["name"].split(".")[-1] != reader["name"].split(".")[-1]:
            problems.append(f"{path}: record {writer['name']} read as {reader['name']}")
        wfields = {f["name"]: f for f in writer["fields"]}
        for f in reader["fields"]:
            names = [f["name"], *f.get("aliases", [])]
            w = next((wfields[n] for n in names if n in wfields), None)
            if w is None:
                if "default" not in f:
                    problems.append(f"{path}.{f['name']}: new field without a default")
                continue
            problems += _match(w["type"], f["type"], f"{path}.{f['name']}", wn, rn)
        return problems
    return [f"{path}: unsupported type {wt}"]


def check_backward(reader: dict, writer: dict) -> list[str]:
    """Problems that stop ``reader`` from reading data written with ``writer`` ([] = compatible)."""
    return _match(writer, reader, reader.get("name", "schema"), {}, {})


def _full_name(schema: dict) -> str:
    ns = schema.get("namespace")
    return f"{ns}.{schema['name']}" if ns and "." not in schema["name"] else schema["name"]


def current_schemas() -> dict[str, dict]:
    root = resources.files("tensafe.schemas")
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith(".avsc"):
            s = json.loads(entry.read_text())
            out[_full_name(s)] = s
    return out


def history(schemas_dir: Path | None = None) -> dict[str, list[tuple[int, dict]]]:
    """Full name -> [(version, schema)] sorted by version."""
    root = Path(schemas_dir) if schemas_dir else Path(str(resources.files("tensafe.schemas"))) / "history"
    out: dict[str, list[tuple[int, dict]]] = {}
    if not root.is_dir():
        return out
    for path in root.glob("*.avsc"):
        name, _, ver = path.name[: -len(".avsc")].rpartition(".v")
        out.setdefault(name, []).append((int(ver), json.loads(path.read_text())))
    for versions in out.values():
        versions.sort(key=lambda v: v[0])
    return out
