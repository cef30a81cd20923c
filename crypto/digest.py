"""The base-model weights digest of docs/TSSP_SPEC.md §6.

``SHA-256`` of the ``sha256sum``-style listing of every ``*.safetensors`` file directly
in the model directory, in byte order of names, so anyone can reproduce it with
``cd DIR && LC_ALL=C sha256sum *.safetensors | sha256sum``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256", "model_weights_sha256"]

_BLOCK = 4 * 1024 * 1024


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def model_weights_sha256(model_dir: str | os.PathLike[str]) -> str:
    """Digest of a ``save_pretrained`` directory's safetensors weights. FileNotFoundError if none."""
    d = Path(model_dir)
    files = sorted(
        (p for p in d.iterdir() if p.name.endswith(".safetensors") and p.is_file()),
        key=lambda p: os.fsencode(p.name),
    )
    if not files:
        # Only safetensors weights count: pickled .bin weights are never hashed nor loaded.
        raise FileNotFoundError(f"no *.safetensors weights in {d}")
    listing = "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()
