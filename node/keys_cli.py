"""`tensafe keys create|rotate|shred --tenant T`: key life-cycle as ledger commands.

The command goes to the trainer that owns the tenant's partition, which performs it
on the keyring and records TenantKeyCreated / KeyRotated / TenantShredded, so every
key event is in the audit chain in order with the data events it affects.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import time
import uuid


def add_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="tenant key life-cycle (recorded on the ledger)")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    for name, help_ in (
        ("create", "create the tenant's KEK"),
        ("rotate", "rotate the tenant's KEK (re-wraps DEKs)"),
        ("shred", "crypto-shred the tenant: irreversible"),
    ):
        p = ksub.add_parser(name, help=help_)
        p.add_argument("--tenant", required=True)
        p.add_argument("--data-dir")
        p.add_argument("--bootstrap")
        p.add_argument("--timeout", type=float, default=60.0)
        if name == "shred":
            p.add_argument("--reason", default="")
            p.add_argument(
                "--yes", action="store_true", help="confirm: the tenant's data becomes unreadable forever"
            )
        p.set_defaults(func=_run, action=name)


COMMAND = {"create": "CreateTenantKey", "rotate": "RotateTenantKey", "shred": "ShredTenant"}


def _run(args) -> int:
    if args.action == "shred" and not args.yes:
        print(
            "refusing to shred without --yes (the tenant's artifacts and log fields become unreadable forever)"
        )
        return 2
    return asyncio.run(_publish_and_wait(args))


async def _publish_and_wait(args) -> int:
    from tensafe.events import kafka_io
    from tensafe.events.commands import SUCCESS_EVENT, Command, partition_for, publish_command
    from tensafe.events.ledger import LedgerFollower
    from tensafe.events.node_config import read_node, resolve_bootstrap
    from tensafe.events.topics import partition_counts, topic_names

    bootstrap = resolve_bootstrap(args.bootstrap, args.data_dir)
    names = topic_names(read_node(args.data_dir).get("topic_prefix", ""))
    parts = (await partition_counts(bootstrap, [names.commands]))[names.commands]
    ctype = COMMAND[args.action]
    payload = {"requested_by": getpass.getuser()}
    if args.action == "shred":
        payload["reason"] = args.reason
    cmd = Command(f"cmd_{uuid.uuid4().hex}", ctype, args.tenant, "", payload)
    producer = kafka_io.make_producer(bootstrap)
    await producer.start()
    try:
        await publish_command(producer, names.commands, parts, cmd)
    finally:
        await producer.stop()
    follower = LedgerFollower(bootstrap, partition_for(args.tenant, parts), topic=names.ledger)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        async for entry in follower.read_to_end():
            env = entry.envelope
            if env.command_id != cmd.command_id or env.short_type == "CommandAccepted":
                continue
            rec = env.payload_record()
            ok = env.short_type == SUCCESS_EVENT[ctype]
            print(f"{'OK' if ok else 'FAILED'}: {env.short_type} seq {entry.seq}: {rec}")
            return 0 if ok else 1
        await asyncio.sleep(0.3)
    print(f"no outcome for {cmd.command_id} within {args.timeout} s (is the trainer running?)")
    return 1
