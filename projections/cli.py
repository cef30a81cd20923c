"""`tensafe sql "SELECT ..."`: compliance questions answered from a read model rebuilt by replay.
`tensafe project --db FILE`: run the live projector as a process.

``tensafe sql`` replays the ledger (from the broker, or an export file with no broker)
into a fresh in-memory read model, or into ``--db FILE`` (kept and caught up on the
next call), then runs ONE read-only statement: SELECT / WITH / FROM / VALUES /
DESCRIBE / SHOW / SUMMARIZE / EXPLAIN / PRAGMA. The query runs with external access
disabled and the configuration locked, so it cannot read or write files either.

Exit status: 0 on success, 2 on a refused or failing query or an unreachable source,
1 when the ledger does not verify while replaying (the chain is broken).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

# Statement types DuckDB's parser assigns to read-only statements. DESCRIBE, SHOW,
# SUMMARIZE, FROM-first and VALUES parse as SELECT; WITH ... INSERT parses as INSERT.
_READ_ONLY = {"SELECT", "EXPLAIN", "PRAGMA"}


class QueryRefused(ValueError):
    """The statement is not a single read-only query."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql",
        help="run a read-only SQL query on the ledger's read model (rebuilt by replay)",
        description="Rebuild the DuckDB read model by replaying the ledger and run one read-only query. "
        "Tables: ledger_events, training_clients, steps, privacy_budgets, artifacts, artifact_access, "
        "datasets, keys, audit_entries (view), projection_state. See docs/COMPLIANCE.md.",
    )
    p.add_argument("query", help='one read-only statement, e.g. "SELECT * FROM privacy_budgets"')
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local node's)")
    src.add_argument("--file", help="an export file (tensafe audit export) instead of a broker")
    p.add_argument("--data-dir", help="node data directory (default $TENSAFE_DATA_DIR or ./.tensafe)")
    p.add_argument("--topic-prefix", default=os.environ.get("TENSAFE_TOPIC_PREFIX", ""))
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--db", help="build (or catch up) the read model in this DuckDB file instead of memory")
    p.set_defaults(func=_sql)

    r = sub.add_parser("project", help="run the live projector: follow the ledger into a DuckDB file")
    add_run_arguments(r)
    r.set_defaults(func=_project)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of the projector process (also ``python -m tensafe.projections.projector``)."""
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local node's)")
    p.add_argument("--data-dir", help="node data directory (default $TENSAFE_DATA_DIR or ./.tensafe)")
    p.add_argument("--topic-prefix", default=os.environ.get("TENSAFE_TOPIC_PREFIX", ""))
    p.add_argument("--db", required=True, help="DuckDB file of the read model (created if missing)")
    p.add_argument("--engine", choices=("faust", "asyncio"), default="faust")
    p.add_argument("--max-batch", type=int, default=1000)
    p.add_argument(
        "--progress", action="store_true", help="print a JSON line {partition: next_seq} per batch"
    )


def _project(args: argparse.Namespace) -> int:
    # Imported here: `tensafe --help` must not pay for duckdb, pyarrow and aiokafka.
    from tensafe.projections.projector import run_from_args

    return run_from_args(args)


def check_read_only(query: str) -> None:
    """Raise QueryRefused unless ``query`` is exactly one read-only statement."""
    import duckdb

    try:
        statements = duckdb.connect().extract_statements(query)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse the query: {exc}") from None
    if len(statements) != 1:
        raise QueryRefused(f"exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _READ_ONLY:
        raise QueryRefused(
            f"read-only queries only (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, PRAGMA); got {kind}"
        )


def run_query(rm: Any, query: str) -> tuple[list[str], list[tuple]]:
    """Run a checked read-only query on a ReadModel with file access off and settings locked."""
    check_read_only(query)
    # Both settings are database-wide and stay (locked) for the model's lifetime; the
    # projector's Arrow inserts are unaffected. Applied once: a locked setting can't be SET.
    cur = rm.con.cursor()
    try:
        if not cur.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
            cur.execute("SET enable_external_access = false")
            cur.execute("SET lock_configuration = true")
        res = cur.execute(query)
        if res.description is None:
            return [], []
        return [d[0] for d in res.description], res.fetchall()
    finally:
        cur.close()


def _sql(args: argparse.Namespace) -> int:
    import duckdb
    from tensafe.projections.readmodel import ChainBroken

    try:
        check_read_only(args.query)
    except QueryRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        rm = _build(args)
    except ChainBroken as exc:
        print(f"error: the ledger does not verify: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"error: cannot read the ledger: {exc}", file=sys.stderr)
        return 2
    try:
        columns, rows = run_query(rm, args.query)
    except (QueryRefused, duckdb.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        rm.close()
    write_result(columns, rows, args.format, sys.stdout)
    return 0


def _build(args: argparse.Namespace) -> Any:
    from tensafe.projections.readmodel import ReadModel
    from tensafe.projections.replay import rebuild, rebuild_from_file

    if args.file:
        rm = rebuild_from_file(args.file, db=args.db)
    else:
        from tensafe.events.node_config import resolve_bootstrap

        rm = rebuild(
            resolve_bootstrap(args.bootstrap, args.data_dir), topic_prefix=args.topic_prefix, db=args.db
        )
    if args.db:
        # Built: reopen read-only, so not even a bug here can write to the file.
        rm.close()
        rm = ReadModel(args.db, read_only=True)
    return rm


# --------------------------------------------------------------------------- output


def _plain(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    v = _plain(v)
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def write_result(columns: Sequence[str], rows: Sequence[tuple], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        # One JSON array of objects; datetimes as ISO 8601.
        json.dump([{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if v is None else _cell(v) for v in row])
    else:
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
        out.write(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
        out.write("-+-".join("-" * w for w in widths) + "\n")
        for r in cells:
            out.write(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
