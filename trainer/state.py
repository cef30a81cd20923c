"""Trainer state as bytes, without pickle; PEFT adapter export.

Layout of a state blob::

    b"TSDPST01" | u64-le header length | header (UTF-8 JSON) | safetensors bytes

The JSON header holds everything that is not a tensor (accountant history,
sampler and noise-stream positions, step counters, optimizer hyper-parameters,
config). Tensors (adapter weights, AdamW moments and step counts) live in the
safetensors part. Loading parses JSON and safetensors only: no ``torch.load``,
no pickle, so a hostile blob cannot execute code (it is also AEAD-encrypted
before it is stored; see tensafe.crypto).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

MAGIC = b"TSDPST01"
_MAX_HEADER = 64 * 1024 * 1024


def pack_state(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise a JSON-safe header plus named tensors."""
    hdr = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    body = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    return MAGIC + struct.pack("<Q", len(hdr)) + hdr + body


def unpack_state(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Inverse of :func:`pack_state`; raises ValueError on anything malformed."""
    blob = bytes(blob)
    if len(blob) < 16 or blob[:8] != MAGIC:
        raise ValueError("not a TenSafe DP state blob")
    (n,) = struct.unpack("<Q", blob[8:16])
    if n > _MAX_HEADER or 16 + n > len(blob):
        raise ValueError("corrupt state header length")
    try:
        header = json.loads(blob[16 : 16 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("corrupt state header") from exc
    if not isinstance(header, dict):
        raise ValueError("state header must be a JSON object")
    try:
        tensors = st_load(blob[16 + n :])
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError("corrupt tensor section") from exc
    return header, tensors


def adapter_tensors(named_params: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {f"adapter/{n}": p.detach() for n, p in named_params}


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW per-parameter state keyed by parameter name (not by position)."""
    out: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            name = names[id(p)]
            for k, v in st.items():
                t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
                out[f"optim/{name}/{k}"] = t
    return out


def restore_adapter(named_params: list[tuple[str, nn.Parameter]], tensors: dict[str, torch.Tensor]) -> None:
    want = {f"adapter/{n}" for n, _ in named_params}
    have = {k for k in tensors if k.startswith("adapter/")}
    if want != have:
        missing, extra = sorted(want - have)[:3], sorted(have - want)[:3]
        raise ValueError(f"adapter parameters do not match the model (missing {missing}, unexpected {extra})")
    for n, p in named_params:  # validate everything before changing anything
        t = tensors[f"adapter/{n}"]
        if t.shape != p.shape:
            raise ValueError(f"shape mismatch for {n}: {tuple(t.shape)} vs {tuple(p.shape)}")
    with torch.no_grad():
        for n, p in named_params:
            p.copy_(tensors[f"adapter/{n}"].to(device=p.device, dtype=p.dtype))


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    named_params: list[tuple[str, nn.Parameter]],
    tensors: dict[str, torch.Tensor],
) -> None:
    optimizer.state.clear()
    for name, p in named_params:
        prefix = f"optim/{name}/"
        st = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not st:
            continue
        # AdamW keeps `step` on CPU (non-capturable) and moments next to the parameter.
        restored: dict[str, Any] = {}
        for k, v in st.items():
            restored[k] = v.clone() if k == "step" else v.to(device=p.device, dtype=p.dtype).clone()
        optimizer.state[p] = restored


def export_peft_adapter(peft_model: nn.Module, directory: str | Path) -> Path:
    """Write standard PEFT files (adapter_config.json + adapter_model.safetensors).

    Loadable with ``PeftModel.from_pretrained(base_model, directory)``.
    """
    model = getattr(peft_model, "_module", peft_model)  # unwrap Opacus before any peft call
    if not hasattr(model, "save_pretrained") or not hasattr(model, "peft_config"):
        raise TypeError("export_peft_adapter needs a peft model")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (out / f).is_file():
            raise RuntimeError(f"peft did not write {f}")
    return out
