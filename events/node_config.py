"""Where a local node keeps its connection facts: ``<data-dir>/node.json`` and keys.

``tensafe up`` writes node.json (bootstrap servers, gateway URL, topic prefix) and the
node's checkpoint-signing public key; the CLI reads them so a user can type
``tensafe audit verify`` with no flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

NODE_FILE = "node.json"
SIGNING_PUBLIC = "keys/node_signing.pub"
SIGNING_PRIVATE = "keys/node_signing.key"


def data_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("TENSAFE_DATA_DIR") or ".tensafe")


def read_node(explicit_dir: str | None = None) -> dict:
    path = data_dir(explicit_dir) / NODE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def write_node(dir_: Path, info: dict) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    tmp = dir_ / (NODE_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(dir_ / NODE_FILE)


def resolve_bootstrap(explicit: str | None, explicit_dir: str | None = None) -> str:
    boot = explicit or os.environ.get("TENSAFE_BOOTSTRAP") or read_node(explicit_dir).get("bootstrap")
    if not boot:
        raise SystemExit(
            "no broker: pass --bootstrap, set TENSAFE_BOOTSTRAP, or start a node with `tensafe up`"
        )
    return boot


def load_or_create_signing_key(dir_: Path):
    """The node's hybrid checkpoint-signing key, created on first start (file mode 0600)."""
    from tensafe.crypto.signing import HybridSigningKey

    priv = dir_ / SIGNING_PRIVATE
    if priv.exists():
        key = HybridSigningKey.from_bytes(priv.read_bytes())
    else:
        key = HybridSigningKey.generate()
        priv.parent.mkdir(parents=True, exist_ok=True)
        tmp = priv.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(priv)
    (dir_ / SIGNING_PUBLIC).write_bytes(key.public_key().to_bytes())
    return key


def trusted_keys_from(files: list[str], explicit_dir: str | None = None) -> dict | None:
    """Key id -> HybridPublicKey from the given files, else the local node's key if present."""
    from tensafe.crypto.signing import HybridPublicKey

    paths = [Path(f) for f in files]
    if not paths:
        default = data_dir(explicit_dir) / SIGNING_PUBLIC
        if default.exists():
            paths = [default]
    if not paths:
        return None
    keys = {}
    for path in paths:
        key = HybridPublicKey.from_bytes(path.read_bytes())
        keys[key.key_id] = key
    return keys
