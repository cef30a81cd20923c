"""`make bench`: run every benchmark module, write reports/bench/latest.json, print a table.

Each bench module exposes ``run(quick: bool) -> dict[str, float]``. A module that fails
is reported with its error and the others still run; the exit status is non-zero then.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

MODULES = [
    "bench.bench_ledger",
    "bench.bench_merkle",
    "bench.bench_broker",
    "bench.bench_crypto",
    "bench.bench_dp",
    "bench.bench_sampling",
    "bench.bench_gateway",
    "bench.bench_projection",
    "bench.bench_e2e",
    "bench.bench_tssp",
]


def main() -> int:
    quick = os.environ.get("BENCH_FULL") != "1"
    only = sys.argv[1:]
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in MODULES:
        if only and not any(o in name for o in only):
            continue
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet
            raise
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            got = mod.run(quick)
        except Exception as exc:  # noqa: BLE001 — report and continue with the others
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            timings[name] = round(time.perf_counter() - t0, 1)
        for k, v in got.items():
            metrics[k] = v
            print(f"   {k:40s} {v}", flush=True)
    out = Path("reports/bench/latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "metrics": metrics,
        "seconds_per_module": timings,
        "errors": errors,
        "quick": quick,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_text(json.dumps(report, indent=2))
    print()
    print(f"{'metric':44s} value")
    for k in sorted(metrics):
        print(f"{k:44s} {metrics[k]}")
    print(f"\nwrote {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
