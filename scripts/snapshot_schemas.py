"""Register the current version of every schema in schemas/history/ when it changed.

Run after editing a schema; the schema-compatibility test then checks the new
version can read every earlier one (Avro schema resolution).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastavro.schema import parse_schema, to_parsing_canonical_form
from tensafe.events.schema_compat import check_backward, current_schemas, history

HISTORY = Path(__file__).resolve().parent.parent / "schemas" / "history"


def canonical(schema: dict) -> str:
    return to_parsing_canonical_form(parse_schema(schema, _write_hint=False))


def main() -> None:
    HISTORY.mkdir(exist_ok=True)
    hist = history(HISTORY)
    for name, schema in sorted(current_schemas().items()):
        versions = hist.get(name, [])
        if versions and canonical(versions[-1][1]) == canonical(schema):
            continue
        for ver, old in versions:
            problems = check_backward(schema, old)
            if problems:
                raise SystemExit(f"{name} cannot read its v{ver}: {problems}")
        nxt = versions[-1][0] + 1 if versions else 1
        (HISTORY / f"{name}.v{nxt}.avsc").write_text(json.dumps(schema, indent=2) + "\n")
        print(f"registered {name} v{nxt}")


if __name__ == "__main__":
    main()
