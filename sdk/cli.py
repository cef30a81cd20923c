"""The `tensafe` command. Server-side commands are imported lazily so that the SDK
alone (``pip install tensafe``) still installs and imports without torch."""

from __future__ import annotations

import argparse
import sys


def _server_commands(sub: argparse._SubParsersAction) -> None:
    """Register every command group that lives in a server package, if installed."""
    import importlib

    for module in (
        "tensafe.events.audit_cli",
        "tensafe.node.cli",
        "tensafe.node.keys_cli",
        "tensafe.projections.cli",
        "tensafe.tssp.cli",
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            if exc.name and exc.name.startswith("tensafe."):
                continue  # that part is not built yet
            continue  # server extra not installed
        mod.add_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensafe", description="TenSafe: privacy-first fine-tuning")
    sub = parser.add_subparsers(dest="command", required=True)
    _server_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        raise SystemExit(2)
    sys.exit(func(args) or 0)


if __name__ == "__main__":
    main()
