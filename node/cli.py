"""`tensafe up`: start the embedded node (durable broker, gateway, trainer, projector)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the embedded single-machine node")
    up.add_argument("--data-dir", default=os.environ.get("TENSAFE_DATA_DIR", ".tensafe"))
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=int(os.environ.get("TENSAFE_PORT", "0")))
    up.add_argument("--memory", action="store_true", help="keep the log in memory (lost on stop)")
    up.add_argument("--bootstrap", help="use an external Kafka cluster instead of the embedded broker")
    up.add_argument("--partitions", type=int, default=4)
    up.set_defaults(func=_up)


def _up(args) -> int:
    from tensafe.node.runtime import NodeOptions, serve_forever

    return serve_forever(
        NodeOptions(
            data_dir=Path(args.data_dir),
            host=args.host,
            port=args.port,
            storage="memory" if args.memory else "durable",
            partitions=args.partitions,
            bootstrap=args.bootstrap,
            test_mode=os.environ.get("TENSAFE_TEST_MODE") == "1",
        )
    )
