"""`tensafe audit ...`: verify, export, prove, check-proof.

Exit status: 0 when the ledger verifies, 1 when it does not (the first bad position
of each partition is printed), 2 on usage errors or unreachable sources.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from tensafe.events.node_config import resolve_bootstrap, trusted_keys_from


def add_commands(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify, export and prove the ledger")
    asub = audit.add_subparsers(dest="audit_cmd", required=True)

    def source(p: argparse.ArgumentParser, file_ok: bool = True) -> None:
        p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local node's)")
        p.add_argument("--data-dir", help="node data directory (default $TENSAFE_DATA_DIR or ./.tensafe)")
        p.add_argument("--topic-prefix", default=os.environ.get("TENSAFE_TOPIC_PREFIX", ""))
        if file_ok:
            p.add_argument("--file", help="verify an export file offline instead of a broker")

    v = asub.add_parser("verify", help="recompute every hash; check epochs, sequence and checkpoints")
    source(v)
    v.add_argument("--client", help="verify only the chain holding this training client's events")
    v.add_argument("--allow-fenced", action="store_true", help="accept (and list) records of fenced writers")
    v.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        help="hybrid public key file(s) checkpoints must be signed by",
    )
    v.add_argument("--json", action="store_true", help="machine-readable report")
    v.set_defaults(func=_verify)

    e = asub.add_parser("export", help="write the ledger (raw bytes) to an Avro container file")
    source(e, file_ok=False)
    e.add_argument("--out", required=True)
    e.set_defaults(func=_export)

    pr = asub.add_parser("prove", help="print an inclusion proof of one event against a signed checkpoint")
    source(pr)
    pr.add_argument("--event", required=True, help="event id")
    pr.add_argument("--out", help="write the proof here (default stdout)")
    pr.set_defaults(func=_prove)

    cp = asub.add_parser("check-proof", help="check an inclusion proof offline")
    cp.add_argument("proof")
    cp.add_argument("--trusted-key", required=False, help="hybrid public key file of the checkpoint signer")
    cp.add_argument("--data-dir")
    cp.set_defaults(func=_check_proof)


def _snapshot(args):
    from tensafe.events.export import collect, read_export

    if getattr(args, "file", None):
        return read_export(args.file)
    return asyncio.run(collect(resolve_bootstrap(args.bootstrap, args.data_dir), args.topic_prefix))


def _verify(args) -> int:
    from tensafe.events.audit import AuditError, verify_snapshot

    snap = _snapshot(args)
    keys = trusted_keys_from(args.trusted_key, args.data_dir)
    try:
        report = verify_snapshot(snap, keys, args.allow_fenced, args.client)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "events": report.total_accepted,
                    "partitions": {
                        p: {
                            "accepted": r.accepted,
                            "head_seq": r.head_seq,
                            "head_hash": r.head_hash.hex(),
                            "epoch": r.epoch,
                            "rejected": r.rejected,
                            "checkpoints_verified": r.checkpoints_verified,
                        }
                        for p, r in report.partitions.items()
                    },
                    "findings": [f.__dict__ for f in report.findings],
                },
                indent=2,
            )
        )
    else:
        for p, r in report.partitions.items():
            extra = f", rejected {r.rejected}" if r.rejected else ""
            print(
                f"partition {p}: {r.accepted} events, head seq {r.head_seq} {r.head_hash.hex()[:16]}…, "
                f"epoch {r.epoch}, {r.checkpoints_verified} signed checkpoints verified{extra}"
            )
        for f in report.findings:
            print(("FAIL " if f in report.errors else "warn ") + str(f))
        if report.ok:
            print(
                f"OK: {report.total_accepted} events verified"
                + (f" for client {args.client}" if args.client else "")
            )
    return 0 if report.ok else 1


def _export(args) -> int:
    from tensafe.events.export import collect, write_export

    snap = asyncio.run(collect(resolve_bootstrap(args.bootstrap, args.data_dir), args.topic_prefix))
    n = write_export(args.out, snap)
    print(f"exported {n} records to {args.out}")
    return 0


def _prove(args) -> int:
    from tensafe.events.audit import AuditError, prove_event

    try:
        proof = prove_event(_snapshot(args), args.event, args.topic_prefix)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = proof.to_json()
    if args.out:
        Path(args.out).write_text(text)
        print(f"inclusion proof of {args.event}: seq {proof.index} in tree of {proof.size} -> {args.out}")
    else:
        print(text, end="")
    return 0


def _check_proof(args) -> int:
    from tensafe.events.audit import AuditError, check_proof
    from tensafe.events.checkpoint_format import CheckpointFormatError, InclusionProofFile

    try:
        proof = InclusionProofFile.from_json(Path(args.proof).read_bytes())
    except (OSError, CheckpointFormatError) as exc:
        print(f"error: proof file unreadable: {exc}", file=sys.stderr)
        return 2
    keys = trusted_keys_from([args.trusted_key] if args.trusted_key else [], args.data_dir)
    if not keys or proof.checkpoint.key_id not in keys:
        print(f"FAIL: no trusted key {proof.checkpoint.key_id} (pass --trusted-key)", file=sys.stderr)
        return 1
    try:
        check_proof(proof, keys[proof.checkpoint.key_id])
    except AuditError as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"OK: leaf {proof.index} is in the signed tree of size {proof.size} ({proof.checkpoint.origin})")
    return 0
