def main() -> None:
    raise SystemExit("tensafe CLI: not yet wired")
