"""Verify a ledger from its raw records: chain, epochs, sequence and signed checkpoints.

The same function verifies a live topic (records read from the broker) and an
exported file (records read from an Avro container), so both give the same answer.
Per partition it stops at the first bad position and names what is wrong:

  modified   a record's bytes changed (its hash no longer matches its successor's link,
             or its bytes no longer decode, or a signed checkpoint disagrees)
  missing    records are absent (a gap in seq)
  reordered  records appear out of order
  inserted   a record that belongs to no chain position was added
  forked     two different records claim the same position after the same parent
  stale_epoch  a record from a fenced writer (epoch below the current claim)
  bad_epoch  an epoch change without a claim, or a claim that does not raise the epoch
  truncated  a signed checkpoint covers more events than the log holds
  bad_signature  a checkpoint's signature does not verify or its signer is not trusted
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tensafe.events.chain import ChainState, Verdict, event_hash
from tensafe.events.envelope import HeaderError, read_header

FATAL_ALWAYS = {
    "modified",
    "missing",
    "reordered",
    "inserted",
    "forked",
    "bad_epoch",
    "truncated",
    "bad_signature",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    partition: int
    offset: int | None
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f"partition {self.partition}"
        if self.offset is not None:
            where += f" offset {self.offset}"
        if self.seq is not None:
            where += f" seq {self.seq}"
        return f"{self.kind} at {where}: {self.detail}"


@dataclass
class PartitionReport:
    partition: int
    records: int = 0
    accepted: int = 0
    head_seq: int = -1
    head_hash: bytes = b""
    epoch: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    checkpoints_verified: int = 0
    findings: list[Finding] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list, repr=False)
    accepted_offsets: list[int] = field(default_factory=list, repr=False)


@dataclass
class Report:
    partitions: dict[int, PartitionReport]
    allow_fenced: bool = False

    @property
    def findings(self) -> list[Finding]:
        return [f for p in sorted(self.partitions) for f in self.partitions[p].findings]

    @property
    def errors(self) -> list[Finding]:
        return [
            f
            for f in self.findings
            if f.kind in FATAL_ALWAYS or (f.kind == "stale_epoch" and not self.allow_fenced)
        ]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def total_accepted(self) -> int:
        return sum(p.accepted for p in self.partitions.values())


def _header(raw: bytes):
    try:
        return read_header(raw)
    except HeaderError:
        return None


def _links(raw: bytes, seq: int, prev: bytes, partition: int) -> bool:
    h = _header(raw)
    return h is not None and h.partition == partition and h.seq == seq and h.prev_hash == prev


def _classify(
    state: ChainState, records: Sequence[tuple[int, bytes]], i: int, reason: str, prev_offset: int | None
) -> Finding:
    """Name what is wrong at records[i], the first record that does not link."""
    p = state.partition
    offset, raw = records[i]
    s, t = state.next_seq, state.tail_hash
    h = _header(raw)
    nxt = records[i + 1] if i + 1 < len(records) else None
    if reason.startswith("bad_epoch"):
        return Finding("bad_epoch", p, offset, h.seq if h else None, reason)
    if h is None or h.partition != p:
        if nxt is not None and _links(nxt[1], s, t, p):
            return Finding(
                "inserted", p, offset, None, f"a foreign record sits where seq {s} belongs ({reason})"
            )
        return Finding(
            "modified", p, offset, s, f"record does not decode as this partition's envelope ({reason})"
        )
    if h.seq == s:  # right position, wrong link
        if nxt is not None and _links(nxt[1], s, t, p):
            return Finding(
                "inserted",
                p,
                offset,
                s,
                f"an extra record claims seq {s}; the next record continues the chain",
            )
        if nxt is not None and _links(nxt[1], s + 1, event_hash(h.prev_hash, raw), p):
            return Finding(
                "modified",
                p,
                prev_offset,
                s - 1,
                f"the record at seq {s - 1} changed: its hash no longer matches the link in seq {s}",
            )
        return Finding("modified", p, offset, s, "prev_hash does not match the chain")
    if h.seq > s:
        if h.prev_hash == t:
            return Finding("modified", p, offset, s, f"links to seq {s - 1} but its seq field says {h.seq}")
        for later_offset, later in records[i + 1 :]:
            if _links(later, s, t, p):
                return Finding(
                    "reordered",
                    p,
                    offset,
                    h.seq,
                    f"seq {h.seq} appears before seq {s} (at offset {later_offset})",
                )
        return Finding(
            "missing", p, offset, s, f"seq {s}..{h.seq - 1} absent: the next record present is seq {h.seq}"
        )
    # h.seq < s: a second record for a position already taken
    if h.prev_hash == state.hash_at(h.seq - 1):
        return Finding(
            "forked",
            p,
            offset,
            h.seq,
            f"a second record for seq {h.seq} after the same parent (epoch {h.epoch})",
        )
    return Finding("inserted", p, offset, h.seq, f"a record for seq {h.seq} that links to no accepted record")


def verify_partition(
    partition: int,
    records: Sequence[tuple[int, bytes]],
    checkpoints: Iterable = (),
    trusted_keys: dict[str, object] | None = None,
    allow_fenced: bool = False,
) -> PartitionReport:
    """Verify one partition. ``records`` are (offset, stored bytes) in log order."""
    state = ChainState(partition)
    rep = PartitionReport(partition)
    broken = False
    examined = 0
    try_accept = state.try_accept
    accepted_offsets = rep.accepted_offsets
    for i, (offset, raw) in enumerate(records):
        examined = i + 1
        if try_accept(raw) is not None:  # the common case, without building objects
            accepted_offsets.append(offset)
            continue
        out = state.feed(raw)
        if out.verdict is Verdict.ACCEPTED:
            rep.accepted_offsets.append(offset)
            continue
        if out.verdict is Verdict.BROKEN:
            prev = rep.accepted_offsets[-1] if rep.accepted_offsets else None
            rep.findings.append(_classify(state, records, i, out.reason, prev))
            broken = True
            break
        rep.rejected[out.verdict.value] = rep.rejected.get(out.verdict.value, 0) + 1
        if out.verdict is Verdict.STALE_EPOCH:
            rep.findings.append(
                Finding("stale_epoch", partition, offset, out.header.seq, f"fenced writer: {out.reason}")
            )
            if not allow_fenced:
                broken = True
                break
    rep.records = examined
    rep.accepted = state.next_seq
    rep.head_seq = state.next_seq - 1
    rep.head_hash = state.tail_hash
    rep.epoch = state.epoch
    rep.hashes = state.hashes()
    if not broken:
        _check_checkpoints(rep, state, checkpoints, trusted_keys)
    return rep


def _check_checkpoints(rep: PartitionReport, state: ChainState, checkpoints: Iterable, trusted_keys) -> None:
    cps = sorted((c for c in checkpoints if c.partition == rep.partition), key=lambda c: c.tree_size)
    if not cps:
        return
    from tensafe.events.checkpoints import CheckpointError, verify_checkpoint_signature
    from tensafe.events.merkle import MerkleTree

    tree = MerkleTree()
    for digest in rep.hashes:
        tree.append(digest)
    for cp in cps:
        try:
            verify_checkpoint_signature(cp, trusted_keys)
        except CheckpointError as exc:
            rep.findings.append(Finding("bad_signature", rep.partition, None, cp.tree_size - 1, str(exc)))
            return
        if cp.tree_size > rep.accepted:
            rep.findings.append(
                Finding(
                    "truncated",
                    rep.partition,
                    None,
                    rep.accepted,
                    f"a signed checkpoint covers {cp.tree_size} events; the log holds {rep.accepted}",
                )
            )
            return
        if cp.tree_size == 0:
            rep.checkpoints_verified += 1
            continue
        if state.hash_at(cp.tree_size - 1) != cp.head_hash:
            rep.findings.append(
                Finding(
                    "modified",
                    rep.partition,
                    None,
                    cp.tree_size - 1,
                    "the event at the checkpoint's head differs from the signed head hash",
                )
            )
            return
        if tree.root(cp.tree_size) != cp.root:
            rep.findings.append(
                Finding(
                    "modified",
                    rep.partition,
                    None,
                    None,
                    f"history differs from the signed Merkle root at size {cp.tree_size}",
                )
            )
            return
        rep.checkpoints_verified += 1


def verify_records(
    records_by_partition: dict[int, Sequence[tuple[int, bytes]]],
    checkpoints: Iterable = (),
    trusted_keys: dict[str, object] | None = None,
    allow_fenced: bool = False,
) -> Report:
    cps = list(checkpoints)
    return Report(
        {
            p: verify_partition(p, recs, cps, trusted_keys, allow_fenced)
            for p, recs in sorted(records_by_partition.items())
        },
        allow_fenced=allow_fenced,
    )
