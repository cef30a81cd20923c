"""Every SQL block in docs/COMPLIANCE.md runs, read-only, on a synthetic ledger and answers something."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tensafe.projections import synthetic
from tensafe.projections.cli import run_query
from tensafe.projections.replay import rebuild

DOC = Path(__file__).resolve().parents[3] / "docs" / "COMPLIANCE.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def model():
    p0 = synthetic.client_events("tenant0", "tc_000", steps=2, sampling_mode="poisson")
    p0 += synthetic.client_events("tenant1", "tc_001", steps=2, sampling_mode="client_batches")
    p0 += synthetic.tenant_events("tenant1", shred=True)  # same partition: after the client in time too
    p1 = synthetic.tenant_events("tenant0")
    rm = rebuild(synthetic.snapshot({0: synthetic.chain_records(0, p0), 1: synthetic.chain_records(1, p1)}))
    yield rm
    rm.close()


def test_the_doc_has_the_worked_queries():
    assert len(QUERIES) >= 15


@pytest.mark.parametrize("query", QUERIES, ids=[f"q{i}" for i in range(len(QUERIES))])
def test_compliance_query_runs(model, query):
    columns, rows = run_query(model, query.strip().rstrip(";"))
    assert columns and rows, query


def test_shredding_query_answers_what_it_says(model):
    q = next(q for q in QUERIES if "events_after_shredding" in q)
    columns, rows = run_query(model, q.strip().rstrip(";"))
    row = dict(zip(columns, rows[0], strict=True))
    assert row["tenant_id"] == "tenant1" and row["events_after_shredding"] == 0
    assert row["artifacts_unreadable"] == 2  # tc_001's checkpoint and package
