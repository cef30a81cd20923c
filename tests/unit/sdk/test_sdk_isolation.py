"""The SDK stays client-only: stdlib + httpx, never torch/numpy/transformers or a server module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parents[3] / "sdk"
FORBIDDEN_ROOTS = {
    "torch",
    "numpy",
    "transformers",
    "peft",
    "opacus",
    "fastavro",
    "aiokafka",
    "duckdb",
    "cryptography",
}
SERVER_MODULES = {"events", "trainer", "crypto", "gateway", "projections", "tssp", "schemas"}


def test_import_tensafe_does_not_load_torch_or_numpy() -> None:
    code = (
        "import sys, json, tensafe\n"
        "from tensafe import ServiceClient, TrainingClient, FutureHandle, TrainingConfig\n"
        "import tensafe.client, tensafe.training_client, tensafe.futures, tensafe.types, tensafe.errors\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(FORBIDDEN_ROOTS)!r} or m.split('.')[:2] in "
        f"{[['tensafe', s] for s in sorted(SERVER_MODULES)]!r})\n"
        "print(json.dumps(mods))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing tensafe loaded {loaded}"
    assert "torch" not in loaded


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_sdk_sources_import_only_stdlib_httpx_and_sdk_modules() -> None:
    stdlib = set(sys.stdlib_module_names)
    own = {p.stem for p in SDK_DIR.glob("*.py")}
    bad: list[str] = []
    for path in sorted(SDK_DIR.rglob("*.py")):
        for name, level in _imports(path):
            root = name.split(".")[0]
            if level > 0:  # relative: must stay inside sdk/
                if root and root not in own:
                    bad.append(f"{path.name}: from {'.' * level}{name}")
                continue
            if root == "tensafe":
                sub = name.split(".")[1] if "." in name else ""
                if sub in SERVER_MODULES or (sub and sub not in own):
                    bad.append(f"{path.name}: {name}")
            elif root not in stdlib and root != "httpx":
                bad.append(f"{path.name}: {name}")
    assert not bad, "forbidden imports under sdk/: " + ", ".join(bad)
