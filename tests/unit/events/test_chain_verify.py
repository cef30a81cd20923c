"""Chain rules and tamper classification on in-memory records (no broker)."""

from __future__ import annotations

import pytest
from tensafe.events.chain import CLAIM_TYPE, ChainState, Verdict, event_hash, genesis_hash
from tensafe.events.envelope import decode_envelope, make_envelope, read_header
from tensafe.events.verify import verify_partition


def _claim(state: ChainState, epoch: int) -> bytes:
    return make_envelope(
        prev_hash=state.tail_hash,
        partition=state.partition,
        seq=state.next_seq,
        epoch=epoch,
        event_type=CLAIM_TYPE,
        payload={"writer_id": "w", "epoch": epoch, "host": "h", "pid": 1},
        tenant_id="",
        client_id="",
        command_id=None,
    ).encode()


def _event(state: ChainState, epoch: int, i: int, seq: int | None = None, prev: bytes | None = None) -> bytes:
    return make_envelope(
        prev_hash=state.tail_hash if prev is None else prev,
        partition=state.partition,
        seq=state.next_seq if seq is None else seq,
        epoch=epoch,
        event_type="CommandFailed",
        payload={"command_type": "x", "error_code": "e", "message": f"event {i}"},
        tenant_id="t1",
        client_id="c1",
        command_id=f"cmd-{i}",
    ).encode()


def build(partition: int = 0, n: int = 50) -> list[bytes]:
    """A valid chain: one claim at epoch 1, then n events."""
    state = ChainState(partition)
    out = []
    raw = _claim(state, 1)
    assert state.feed(raw).verdict is Verdict.ACCEPTED
    out.append(raw)
    for i in range(n):
        raw = _event(state, 1, i)
        assert state.feed(raw).verdict is Verdict.ACCEPTED
        out.append(raw)
    return out


def recs(raws: list[bytes]) -> list[tuple[int, bytes]]:
    return list(enumerate(raws))


def only(report):
    assert len(report.findings) == 1, report.findings
    return report.findings[0]


def test_valid_chain_verifies_and_hashes_recompute():
    raws = build(n=100)
    rep = verify_partition(0, recs(raws))
    assert rep.findings == [] and rep.accepted == 101 and rep.epoch == 1
    prev = genesis_hash(0)
    for raw in raws:
        assert read_header(raw).prev_hash == prev
        prev = event_hash(prev, raw)
    assert rep.head_hash == prev


def test_header_fast_path_agrees_with_full_decode():
    raw = build(n=1)[1]
    h, env = read_header(raw), decode_envelope(raw)
    assert (h.prev_hash, h.partition, h.seq, h.epoch, h.event_type) == (
        env.prev_hash,
        env.partition,
        env.seq,
        env.epoch,
        env.event_type,
    )


def test_modified_payload_is_named_at_its_position():
    raws = build(n=20)
    raw = bytearray(raws[7])
    raw[-3] ^= 0x01  # a byte of the payload's message text
    raws[7] = bytes(raw)
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "modified" and f.seq == 7 and f.offset == 7


def test_deleted_record_is_missing():
    raws = build(n=20)
    del raws[5]
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "missing" and f.seq == 5


def test_swapped_records_are_reordered():
    raws = build(n=20)
    raws[5], raws[6] = raws[6], raws[5]
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "reordered" and f.offset == 5


def test_forged_extra_record_is_inserted():
    raws = build(n=20)
    state = ChainState(0)
    for r in raws[:10]:
        state.feed(r)
    forged = _event(state, 1, 999, prev=b"\x00" * 32)
    raws.insert(10, forged)
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "inserted" and f.offset == 10


def test_second_child_of_same_parent_is_forked():
    raws = build(n=20)
    state = ChainState(0)
    for r in raws[:10]:
        state.feed(r)
    sibling = _event(state, 1, 555, seq=9, prev=state.hash_at(8))
    raws.insert(12, sibling)
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "forked" and f.seq == 9 and f.offset == 12


def test_exact_duplicate_is_ignored_as_retry():
    raws = build(n=10)
    raws.insert(6, raws[4])
    rep = verify_partition(0, recs(raws))
    assert rep.findings == [] and rep.rejected == {"duplicate": 1} and rep.accepted == 11


def test_zombie_with_old_epoch_is_fenced():
    raws = build(n=10)
    state = ChainState(0)
    for r in raws:
        state.feed(r)
    zombie_state_tail, zombie_seq = state.tail_hash, state.next_seq
    claim = _claim(state, 2)
    state.feed(claim)
    raws.append(claim)
    zombie = _event(state, 1, 77, seq=zombie_seq, prev=zombie_state_tail)
    raws.append(zombie)
    assert state.feed(zombie).verdict is Verdict.STALE_EPOCH
    after = _event(state, 2, 78)
    raws.append(after)
    assert state.feed(after).verdict is Verdict.ACCEPTED
    strict = verify_partition(0, recs(raws))
    f = only(strict)
    assert f.kind == "stale_epoch" and f.offset == 12 and strict.accepted == 12
    lenient = verify_partition(0, recs(raws), allow_fenced=True)
    assert lenient.accepted == 13 and lenient.rejected == {"stale_epoch": 1}


def test_epoch_change_without_claim_is_bad_epoch():
    raws = build(n=5)
    state = ChainState(0)
    for r in raws:
        state.feed(r)
    raws.append(_event(state, 5, 9))
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "bad_epoch"


def test_claim_that_lost_a_race_is_ignored_and_reclaim_wins():
    raws = build(n=5)
    state = ChainState(0)
    for r in raws:
        state.feed(r)
    stale_view_tail, stale_seq = state.tail_hash, state.next_seq
    late = _event(state, 1, 100)  # the old owner's late write lands first
    state.feed(late)
    raws.append(late)
    lost = make_envelope(
        prev_hash=stale_view_tail,
        partition=0,
        seq=stale_seq,
        epoch=2,
        event_type=CLAIM_TYPE,
        payload={"writer_id": "new", "epoch": 2, "host": "h", "pid": 2},
        tenant_id="",
        client_id="",
        command_id=None,
    ).encode()
    assert state.feed(lost).verdict is Verdict.LOST_CLAIM
    raws.append(lost)
    reclaim = _claim(state, 3)
    assert state.feed(reclaim).verdict is Verdict.ACCEPTED
    raws.append(reclaim)
    rep = verify_partition(0, recs(raws))
    assert rep.findings == [] and rep.epoch == 3 and rep.rejected == {"lost_claim": 1}


def test_record_of_another_partition_is_detected():
    raws = build(0, n=5)
    other = build(1, n=5)
    raws.insert(3, other[3])
    f = only(verify_partition(0, recs(raws)))
    assert f.kind == "inserted" and f.offset == 3


@pytest.mark.parametrize("cut", [0, 5, 19])
def test_undecodable_bytes_are_modified(cut):
    raws = build(n=20)
    raws[cut + 1] = b"\xc3\x01garbage"
    f = only(verify_partition(0, recs(raws)))
    assert f.kind in {"modified", "inserted"} and f.offset == cut + 1


def test_hand_decoder_equals_avro_decoder():
    from tensafe.events import codec
    from tensafe.events.envelope import Envelope

    for raw in build(n=5):
        assert decode_envelope(raw) == Envelope(**codec.decode_as("tensafe.ledger.Envelope", raw))


@pytest.mark.parametrize(
    "seq,epoch,cmd", [(0, 1, None), (63, 64, "c"), (2**40, 2**31, "cmd-\u00e9"), (10**15, 7, "")]
)
def test_hand_encoder_equals_avro_encoder(seq, epoch, cmd):
    from tensafe.events import codec

    env = make_envelope(
        prev_hash=bytes(range(32)),
        partition=300,
        seq=seq,
        epoch=epoch,
        event_type="CommandFailed",
        payload=_payload_record(),
        tenant_id="t\u00fc",
        client_id="c" * 200,
        command_id=cmd,
    )
    assert env.encode() == codec.encode("tensafe.ledger.Envelope", env.__dict__)


def _payload_record() -> dict:
    return {"command_type": "x", "error_code": "e", "message": "m" * 300}
