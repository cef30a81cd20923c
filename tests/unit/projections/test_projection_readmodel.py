"""ReadModel on in-memory chains (no broker): derived tables, idempotency, chain checks, restart."""

from __future__ import annotations

import json

import pytest
from tensafe.events.chain import CLAIM_TYPE, ChainState, Verdict
from tensafe.events.envelope import make_envelope, read_header
from tensafe.events.export import write_export
from tensafe.events.ledger import LedgerEntry
from tensafe.projections import readmodel as readmodel_mod
from tensafe.projections import synthetic
from tensafe.projections.readmodel import ChainBroken, RawRecord, ReadModel
from tensafe.projections.replay import apply_snapshot, rebuild, rebuild_from_file


def _records(p: int, raws: list[bytes], start: int = 0) -> list[RawRecord]:
    return [RawRecord(p, start + i, raw) for i, raw in enumerate(raws)]


@pytest.fixture(scope="module")
def small() -> dict[int, list[bytes]]:
    """Partition 0: tenant A, a client_batches client (2 steps) and a poisson client (3 steps).
    Partition 1: tenant A's keys and tenant B (client + keys, shredded at the end)."""
    p0 = synthetic.client_events("A", "c_fb", steps=2, refused=2, sampling_mode="client_batches")
    p0 += synthetic.client_events("A", "c_po", steps=3, refused=1, sampling_mode="poisson")
    p1 = synthetic.tenant_events("A")
    p1 += synthetic.client_events("B", "c_b", steps=2, refused=0, sampling_mode="poisson")
    p1 += synthetic.tenant_events("B", shred=True)
    return {0: synthetic.chain_records(0, p0), 1: synthetic.chain_records(1, p1)}


@pytest.fixture(scope="module")
def big() -> dict[int, list[bytes]]:
    return {p: synthetic.chain_records(p, ev) for p, ev in synthetic.workload(600, partitions=3).items()}


def _model(chains: dict[int, list[bytes]], batch: int = 10_000, path=None) -> ReadModel:
    rm = ReadModel(path)
    for p, raws in chains.items():
        recs = _records(p, raws)
        for i in range(0, len(recs), batch):
            rm.apply(recs[i : i + batch])
    return rm


def test_derived_tables(small):
    rm = _model(small)
    n = sum(len(v) for v in small.values())
    assert rm.count("ledger_events") == n == rm.count("audit_entries")

    clients = {r[0]: r for r in rm.sql("SELECT client_id, tenant_id, status, step, epsilon_spent, model_ref, "
                                       "dataset_id, sampling_mode, last_seq, partition FROM training_clients")[1]}  # fmt: skip
    assert set(clients) == {"c_fb", "c_po", "c_b"}
    assert clients["c_fb"][1:4] == ("A", "budget_exhausted", 2)
    assert clients["c_po"][6] == "ds_c_po" and clients["c_fb"][6] is None
    assert clients["c_b"][2] == "shredded"  # tenant B's key was destroyed
    assert clients["c_fb"][8] == max(s for (s,) in rm.sql(
        "SELECT seq FROM ledger_events WHERE client_id = 'c_fb'")[1])  # fmt: skip

    # loss of an optimizer step = sample-weighted mean of the forward_backward calls before it
    cols, steps = rm.sql("SELECT step, loss, samples_in_step, noise_multiplier, source FROM steps "
                         "WHERE client_id = 'c_fb' ORDER BY step")  # fmt: skip
    assert [s[0] for s in steps] == [1, 2]
    for step, loss, *_ in steps:
        expect = (16 * (2.0 / step) + 17 * (2.0 / step + 1)) / 33
        assert loss == pytest.approx(expect)
    assert steps[0][4] == "OptimStepApplied"
    po_steps = rm.sql(
        "SELECT step, loss, source, noise_multiplier FROM steps WHERE client_id='c_po' ORDER BY step"
    )[1]
    assert [(s, src) for s, _, src, _ in po_steps] == [(1, "TrainStepCompleted"), (2, "TrainStepCompleted"),
                                                       (3, "TrainStepCompleted")]  # fmt: skip
    assert po_steps[2][1] == pytest.approx(1.0) and po_steps[0][3] == 1.1

    budgets = {r[0]: r for r in rm.sql("SELECT client_id, target_epsilon, epsilon_spent, epsilon_remaining, "
                                       "steps, refused_steps, guarantee FROM privacy_budgets")[1]}  # fmt: skip
    cid, target, spent, remaining, nsteps, refused, guarantee = budgets["c_fb"]
    assert (target, nsteps, refused, guarantee) == (8.0, 2, 2, "conditional_on_client_sampling")
    assert remaining == pytest.approx(target - spent) and spent == pytest.approx(8.0 * 2 / 6)
    assert budgets["c_po"][4:] == (3, 1, "poisson_subsampled_gaussian")

    kinds = rm.sql("SELECT kind, count(*) FROM artifacts GROUP BY kind ORDER BY kind")[1]
    assert kinds == [("checkpoint", 3), ("dataset", 2), ("package", 3)]
    ckpt = rm.sql("SELECT artifact_id, client_id, size, dek_id, step FROM artifacts WHERE client_id='c_po' "
                  "AND kind='checkpoint'")[1]  # fmt: skip
    assert ckpt == [("art_c_po_ckpt1", "c_po", 4097, "dek_A_0", 1)]
    access = rm.sql(
        "SELECT action, source_event FROM artifact_access WHERE artifact_id='art_c_po_ckpt1' ORDER BY ts"
    )[1]
    assert access == [("put", "StateSaved"), ("get", "ArtifactAccessed"), ("get", "StateLoaded")]
    assert rm.sql("SELECT dataset_id, num_records FROM datasets ORDER BY 1")[1] == [
        ("ds_c_b", 1000),
        ("ds_c_po", 1000),
    ]

    keys = rm.sql("SELECT tenant_id, action, count FROM keys ORDER BY tenant_id, seq")[1]
    assert keys == [("A", "kek_created", None), ("A", "dek_created", None), ("A", "dek_created", None),
                    ("A", "rotated", 2), ("B", "kek_created", None), ("B", "dek_created", None),
                    ("B", "dek_created", None), ("B", "rotated", 2), ("B", "shredded", 2)]  # fmt: skip

    # ciphertext stays ciphertext: bytes fields are hex in payload_json
    (payload,) = rm.sql(
        "SELECT payload_json FROM ledger_events WHERE client_id='c_po' AND event_type='SampleCompleted'"
    )[1][0]
    sample = json.loads(payload)
    assert len(bytes.fromhex(sample["prompts_ciphertext"])) == 40
    cats = dict(rm.sql("SELECT category, count(*) FROM audit_entries GROUP BY 1")[1])
    assert cats["key"] == 9 and cats["ledger"] == 2 and cats["privacy"] == 3
    summary = rm.sql("SELECT summary FROM audit_entries WHERE action='BudgetRefused' AND client_id='c_po'")[
        1
    ][0][0]
    assert summary.startswith("refused step 4: epsilon would be 8.5 > target 8.0")

    state = rm.sql(
        "SELECT partition, next_seq, last_offset, epoch, rejected FROM projection_state ORDER BY 1"
    )[1]
    assert state == [(0, len(small[0]), len(small[0]) - 1, 1, 0), (1, len(small[1]), len(small[1]) - 1, 1, 0)]


def test_apply_twice_equals_once_and_batching_does_not_matter(big, small):
    once = _model(big)
    expected = once.dump()
    for p, raws in big.items():  # the same batch again: every record is skipped
        res = once.apply(_records(p, raws))
        assert res.applied == 0 and res.skipped == len(raws)
    assert once.dump() == expected
    assert _model(big, batch=50).dump() == expected  # (50 > SMALL_BATCH: the Arrow path)
    # one event per batch (the VALUES path, as a live projector at low rate): same rows
    assert _model(small, batch=1).dump() == _model(small).dump()


def test_ledger_entries_and_raw_records_project_the_same(small):
    rm = ReadModel()
    for p, raws in small.items():
        st = ChainState(p)
        entries = []
        for off, raw in enumerate(raws):
            out = st.feed(raw)
            entries.append(LedgerEntry(p, off, out.header.seq, out.header.epoch, out.hash, raw, 0))
        rm.apply(entries)
    assert rm.dump() == _model(small).dump()


def test_duplicate_and_stale_records_are_skipped_not_projected(small):
    raws = list(small[0][:10])
    state = ChainState(0)
    for r in raws:
        state.feed(r)
    # a producer retry: the same record again at a later offset
    dup = raws[5]
    # a new writer claims (epoch 2); then the fenced writer's late write arrives (epoch 1)
    claim = make_envelope(prev_hash=state.tail_hash, partition=0, seq=state.next_seq, epoch=2, event_type=CLAIM_TYPE,
                          payload={"writer_id": "w2", "epoch": 2, "host": "h", "pid": 2}, tenant_id="", client_id="",
                          command_id=None).encode()  # fmt: skip
    assert state.feed(claim).verdict is Verdict.ACCEPTED
    zombie = make_envelope(prev_hash=state.hash_at(9), partition=0, seq=10, epoch=1, event_type="CommandFailed",
                           payload={"command_type": "x", "error_code": "e", "message": "late"}, tenant_id="A",
                           client_id="c_fb", command_id="late").encode()  # fmt: skip
    rm = ReadModel()
    res = rm.apply(_records(0, [*raws, dup, claim, zombie]))
    assert res.applied == 11 and res.rejected == {"duplicate": 1, "stale_epoch": 1}
    assert rm.count("ledger_events") == 11
    assert rm.sql("SELECT next_seq, epoch, last_offset, rejected FROM projection_state")[1] == [
        (11, 2, 12, 2)
    ]
    assert rm.sql("SELECT count(*) FROM ledger_events WHERE command_id = 'late'")[1] == [(0,)]


def test_chain_break_raises_with_position_and_keeps_the_verified_prefix(small):
    raws = list(small[0])
    del raws[7]  # a missing record: the next one does not link
    rm = ReadModel()
    with pytest.raises(ChainBroken) as info:
        rm.apply(_records(0, raws))
    err = info.value
    assert (err.partition, err.offset, err.seq, err.expected_seq) == (0, 7, 8, 7)
    assert "partition 0 offset 7" in str(err)
    # everything before the break is projected, nothing after it
    assert rm.sql("SELECT max(seq), count(*) FROM ledger_events")[1] == [(6, 7)]
    assert rm.sql("SELECT next_seq, last_offset FROM projection_state")[1] == [(7, 6)]
    # it stays broken: the same records again stop at the same place
    with pytest.raises(ChainBroken) as again:
        rm.apply(_records(0, raws))
    assert again.value.offset == 7


def test_modified_record_breaks_at_its_successor(small):
    raws = list(small[0])
    bad = bytearray(raws[4])
    bad[-3] ^= 0x01
    raws[4] = bytes(bad)
    rm = ReadModel()
    with pytest.raises(ChainBroken) as info:
        rm.apply(_records(0, raws))
    assert info.value.offset == 5 and info.value.seq == 5 and "does not link" in info.value.reason


def test_restart_resumes_from_projection_state(tmp_path, big):
    db = tmp_path / "rm.duckdb"
    half = {p: raws[: len(raws) // 2] for p, raws in big.items()}
    first = _model(half, path=db)
    first.close()
    again = ReadModel(db)
    pos = again.positions()
    assert {p: (x.next_seq, x.last_offset) for p, x in pos.items()} == {
        p: (len(r), len(r) - 1) for p, r in half.items()
    }
    st = ChainState(0)
    for raw in half[0]:
        st.feed(raw)
    assert pos[0].tail_hash == st.tail_hash and pos[0].epoch == 1
    # the whole log again: the first half is skipped, the rest links to the restored tail
    total = 0
    for p, raws in big.items():
        res = again.apply(_records(p, raws))
        assert res.skipped == len(half[p])
        total += res.applied
    assert total == sum(len(r) - len(half[r_p]) for r_p, r in big.items())
    assert again.dump() == _model(big).dump()
    # accepted hashes were restored too: an old record re-sent at a new offset is a duplicate
    p0 = big[0]
    res = again.apply([RawRecord(0, len(p0), p0[3])])
    assert res.rejected == {"duplicate": 1}
    again.close()


def test_a_failed_write_rolls_back_the_whole_batch(monkeypatch, small):
    rm = ReadModel()
    recs = _records(0, small[0])
    rm.apply(recs[:5])
    before = rm.dump()
    real = readmodel_mod._insert

    def failing(con, table, rows):
        if table == "steps":
            raise RuntimeError("disk full")
        real(con, table, rows)

    monkeypatch.setattr(readmodel_mod, "_insert", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        rm.apply(recs[5:])
    assert rm.dump() == before  # no ledger_events rows either: one transaction
    assert rm.positions()[0].next_seq == 5  # the in-memory chain was reloaded
    monkeypatch.setattr(readmodel_mod, "_insert", real)
    rm.apply(recs[5:])
    assert rm.dump() == _model({0: small[0]}).dump()


def test_listener_sees_committed_positions(small):
    rm = ReadModel()
    seen: list[dict[int, int]] = []
    rm.add_listener(seen.append)
    rm.apply(_records(0, small[0][:3]))
    rm.apply(_records(1, small[1][:2]))
    assert seen == [{0: 3}, {1: 2}]


def test_rebuild_from_snapshot_and_export_file(tmp_path, big):
    live = _model(big, batch=50).dump()
    snap = synthetic.snapshot(big)
    assert rebuild(snap).dump() == live
    path = tmp_path / "ledger.avro"
    write_export(path, snap)
    assert rebuild_from_file(path).dump() == live
    rm = ReadModel()
    res = apply_snapshot(rm, snap, batch_size=100)
    assert res.applied == sum(len(v) for v in big.values())


def test_payload_json_is_strict_json():
    assert readmodel_mod.payload_to_json({"a": float("nan"), "b": b"\x01\xff", "c": [float("inf")]}) == (
        '{"a":"nan","b":"01ff","c":["inf"]}'
    )


def test_header_positions_are_the_chain_positions(small):
    rm = _model(small)
    rows = rm.sql("SELECT partition, seq, hash, prev_hash FROM ledger_events ORDER BY partition, seq")[1]
    for (p, seq, _h, prev), raw in zip(rows, [*small[0], *small[1]], strict=True):
        hdr = read_header(raw)
        assert (hdr.partition, hdr.seq, hdr.prev_hash.hex()) == (p, seq, prev)


def test_an_error_while_projecting_leaves_no_trace(monkeypatch, small):
    rm = ReadModel()
    recs = _records(0, small[0])
    rm.apply(recs[:3])
    before, pos = rm.dump(), rm.positions()

    def boom(*args):
        raise KeyError("field renamed by a newer schema")

    monkeypatch.setitem(readmodel_mod._HANDLERS, "OptimStepApplied", boom)
    with pytest.raises(KeyError):
        rm.apply(recs[3:])
    assert rm.dump() == before and rm.positions() == pos  # chains reloaded from the database
    monkeypatch.undo()
    rm.apply(recs[3:])
    assert rm.dump() == _model({0: small[0]}).dump()
