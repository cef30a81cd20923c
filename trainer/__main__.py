"""`python -m tensafe.trainer`: run a trainer worker as its own process (cluster mode).

It owns the given command partitions and is the single writer of the matching ledger
partitions. Keys and artifacts come from the node data directory (or a KMS / S3 in a
cluster); the worker never talks to the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tensafe.trainer")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--data-dir", required=True, help="keys/, artifacts/, trainer-state/")
    ap.add_argument("--topic-prefix", default="")
    ap.add_argument("--partitions", default="all", help="comma-separated partition numbers, or 'all'")
    ap.add_argument("--test-mode", action="store_true", help="seeded noise (tests only: not private)")
    ap.add_argument("--checkpoint-every", type=int, default=256)
    ap.add_argument("--ready-file", help="written once every owned partition is claimed")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=int(os.environ.get("TENSAFE_TORCH_THREADS", "0")),
        help="intra-op threads (0: torch's default, one per core)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=os.environ.get("TENSAFE_LOG", "WARNING"))

    from tensafe.events.node_config import load_or_create_signing_key
    from tensafe.events.topics import partition_counts, topic_names
    from tensafe.node.runtime import open_keyring, open_store
    from tensafe.trainer.worker import TrainerWorker

    data = Path(args.data_dir)
    import torch

    if args.torch_threads:  # e.g. leave cores to a broker on the same machine
        torch.set_num_threads(args.torch_threads)

    async def run() -> None:
        names = topic_names(args.topic_prefix)
        if args.partitions == "all":
            count = (await partition_counts(args.bootstrap, [names.commands]))[names.commands]
            parts = list(range(count))
        else:
            parts = [int(p) for p in args.partitions.split(",")]
        keyring = open_keyring(data)
        worker = TrainerWorker(
            args.bootstrap,
            keyring,
            open_store(data, keyring),
            data / "trainer-state",
            partitions=parts,
            topic_prefix=args.topic_prefix,
            signer=load_or_create_signing_key(data),
            checkpoint_every=args.checkpoint_every,
            test_mode=args.test_mode,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(worker.run(stop))
        if args.ready_file:
            ready = asyncio.create_task(worker.ready.wait())
            await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
            if worker.ready.is_set():
                Path(args.ready_file).write_text(str(os.getpid()))
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
