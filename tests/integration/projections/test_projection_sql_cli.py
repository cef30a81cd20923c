"""`tensafe sql` on a real ledger: from an export file and from the broker, in every format."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest
from tensafe.cli import main
from tensafe.events.export import collect, write_export
from tensafe.events.ledger import LedgerWriter
from tensafe.events.topics import topic_names
from tensafe.projections import synthetic

pytestmark = pytest.mark.integration

QUERY = "SELECT client_id, tenant_id, steps, refused_steps, guarantee FROM privacy_budgets ORDER BY client_id"


async def _write(bootstrap: str, prefix: str) -> None:
    names = topic_names(prefix)
    for p, events in synthetic.workload(300, 4, clients=4).items():
        async with LedgerWriter(bootstrap, p, topic=names.ledger, checkpoint_topic=names.checkpoints) as w:
            await w.append_many(events)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["sql", *argv])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _expected() -> list[tuple]:
    rows = []
    for i in range(4):
        poisson = i % 2 == 0
        per_client = 300 // 4
        steps = (per_client - 12) // (1 if poisson else 3)
        guarantee = "poisson_subsampled_gaussian" if poisson else "conditional_on_client_sampling"
        rows.append((f"tc_{i:03d}", f"tenant{i % 2}", steps, 1 + i % 2, guarantee))
    return rows


def test_tensafe_sql_on_an_export_file_and_on_the_broker(broker, topic_prefix, tmp_path, capsys):
    asyncio.run(_write(broker.bootstrap, topic_prefix))
    export = tmp_path / "ledger.avro"
    write_export(export, asyncio.run(collect(broker.bootstrap, topic_prefix)))
    expected = _expected()

    code, out, err = _run(capsys, QUERY, "--file", str(export), "--format", "json")
    assert code == 0, err
    assert [tuple(r.values()) for r in json.loads(out)] == expected
    assert list(json.loads(out)[0]) == ["client_id", "tenant_id", "steps", "refused_steps", "guarantee"]

    code, out, err = _run(capsys, QUERY, "--file", str(export), "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["client_id", "tenant_id", "steps", "refused_steps", "guarantee"]
    assert [(a, b, int(c), int(d), e) for a, b, c, d, e in rows[1:]] == expected

    code, out, err = _run(capsys, QUERY, "--file", str(export))  # table is the default
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split(" | ")[0].strip() == "client_id" and set(lines[1]) <= {"-", "+"}
    assert [tuple(c.strip() for c in line.split(" | ")) for line in lines[2:-1]] == [
        tuple(str(v) for v in row) for row in expected
    ]
    assert lines[-1] == "(4 rows)"

    # the same answer straight from the broker, and into a kept database file
    db = tmp_path / "rm.duckdb"
    code, out, err = _run(capsys, QUERY, "--bootstrap", broker.bootstrap, "--topic-prefix", topic_prefix,
                          "--db", str(db), "--format", "json")  # fmt: skip
    assert code == 0, err
    assert [tuple(r.values()) for r in json.loads(out)] == expected
    total = sum(len(v) for v in synthetic.workload(300, 4, clients=4).values()) + 4  # + a claim per partition
    code, out, err = _run(
        capsys, "SELECT count(*) AS n FROM ledger_events", "--file", str(export), "--format", "json"
    )
    assert code == 0 and json.loads(out) == [{"n": total}]
