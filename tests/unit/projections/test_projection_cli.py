"""`tensafe sql` without a broker: export files, read-only enforcement, output formats."""

from __future__ import annotations

import csv
import io
import json

import pytest
from tensafe.cli import main
from tensafe.events.export import write_export
from tensafe.projections import synthetic
from tensafe.projections.cli import QueryRefused, check_read_only


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    chains = {p: synthetic.chain_records(p, ev) for p, ev in synthetic.workload(200, 2, clients=2).items()}
    path = tmp_path_factory.mktemp("export") / "ledger.avro"
    write_export(path, synthetic.snapshot(chains))
    return path, chains


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["sql", *argv])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1",
        "with x as (select 1 as a) select * from x",
        "DESCRIBE training_clients",
        "SHOW TABLES",
        "SUMMARIZE steps",
        "EXPLAIN SELECT * FROM steps",
        "PRAGMA table_info('steps')",
        "FROM steps",
    ],
)
def test_read_only_statements_pass(query):
    check_read_only(query)


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM steps",
        "INSERT INTO keys SELECT * FROM keys",
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        "DROP TABLE steps",
        "SELECT 1; DROP TABLE steps",
        "COPY steps TO '/tmp/x.csv'",
        "ATTACH '/tmp/other.db'",
        "SET threads = 1",
        "UPDATE training_clients SET status = 'x'",
        "CREATE TABLE t AS SELECT 1",
        "SELEC 1",
    ],
)
def test_writes_and_multi_statements_are_refused(query):
    with pytest.raises(QueryRefused):
        check_read_only(query)


def test_sql_on_an_export_file_in_three_formats(export, capsys):
    path, chains = export
    q = "SELECT partition, seq, event_type, ts, command_id FROM ledger_events WHERE seq < 2 ORDER BY partition, seq"
    code, out, err = _run(capsys, q, "--file", str(path), "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["partition"], r["seq"], r["event_type"]) for r in rows] == [
        (0, 0, "WriterClaimed"), (0, 1, "TenantKeyCreated"), (1, 0, "WriterClaimed"), (1, 1, "DatasetRegistered")
    ]  # fmt: skip
    assert rows[0]["ts"] == "2025-06-15T15:06:40" and rows[0]["command_id"] is None

    code, out, _ = _run(capsys, q, "--file", str(path), "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["partition", "seq", "event_type", "ts", "command_id"]
    assert table[1] == ["0", "0", "WriterClaimed", "2025-06-15T15:06:40", ""]  # NULL is an empty field

    code, out, _ = _run(capsys, q, "--file", str(path))
    lines = out.splitlines()
    assert [c.strip() for c in lines[2].split(" | ")][:3] == ["0", "0", "WriterClaimed"]
    # columns line up: the rule's segments are as wide as the header cells
    assert [len(c) for c in lines[1].split("-+-")][:-1] == [len(c) for c in lines[0].split(" | ")][:-1]
    assert lines[2].rstrip().endswith("NULL") and lines[-1] == "(4 rows)"


def test_write_statements_are_refused_before_any_replay(export, capsys):
    path, _ = export
    code, out, err = _run(capsys, "DELETE FROM steps", "--file", str(path))
    assert code == 2 and out == "" and "read-only" in err


def test_file_access_from_a_query_is_disabled(export, capsys):
    path, _ = export
    code, _, err = _run(capsys, f"SELECT * FROM read_blob('{path}')", "--file", str(path))
    assert code == 2 and "disabled" in err


def test_a_broken_export_is_reported_not_answered(export, capsys, tmp_path):
    _, chains = export
    broken = {p: list(v) for p, v in chains.items()}
    del broken[1][3]
    bad = tmp_path / "broken.avro"
    write_export(bad, synthetic.snapshot(broken))
    code, out, err = _run(capsys, "SELECT count(*) FROM ledger_events", "--file", str(bad))
    assert code == 1 and out == "" and "partition 1 offset 3" in err


def test_db_file_is_kept_and_reopened_read_only(export, capsys, tmp_path):
    path, chains = export
    db = tmp_path / "rm.duckdb"
    for _ in range(2):  # the second run finds everything applied already
        code, out, err = _run(capsys, "SELECT count(*) AS n FROM ledger_events", "--file", str(path), "--db", str(db),
                              "--format", "json")  # fmt: skip
        assert code == 0, err
        assert json.loads(out) == [{"n": sum(len(v) for v in chains.values())}]
