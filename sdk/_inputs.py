"""Turn user inputs (lists, tensors, numpy arrays, Batch/Datum, Tinker-like Datum objects) into JSON.

Tensors are duck-typed through `.tolist()`; torch and numpy are never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ValidationError
from .types import Batch, Datum

__all__ = ["MAX_ROWS", "forward_backward_body", "plain", "prompt_fields"]

MAX_ROWS = 256
_BATCH_KEYS = ("input_ids", "attention_mask", "labels")


def plain(x: Any) -> Any:
    """Recursively convert tensor-likes (anything with `.tolist()`) and tuples to lists."""
    if hasattr(x, "tolist") and not isinstance(x, str | bytes):
        return plain(x.tolist())
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise ValidationError(f"{where}: expected an integer, got {type(v).__name__}", code="schema_violation")


def _int_row(row: Any, where: str) -> list[int]:
    if not isinstance(row, list):
        raise ValidationError(f"{where}: expected a list of integers", code="schema_violation")
    return [_int(v, f"{where}[{i}]") for i, v in enumerate(row)]


def _int_matrix(value: Any, where: str) -> list[list[int]]:
    value = plain(value)
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{where}: expected a non-empty list of rows", code="schema_violation")
    if not isinstance(value[0], list):  # a single 1-D row
        value = [value]
    return [_int_row(row, f"{where}[{i}]") for i, row in enumerate(value)]


def _rows_limit(n: int, where: str) -> None:
    if not 1 <= n <= MAX_ROWS:
        raise ValidationError(f"{where}: {n} rows, must be 1..{MAX_ROWS}", code="schema_violation")


def _batch_body(src: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(src) - set(_BATCH_KEYS))
    if unknown:
        raise ValidationError(
            f"batch: unknown keys {unknown}; expected {list(_BATCH_KEYS)}", code="schema_violation"
        )
    if src.get("input_ids") is None:
        raise ValidationError("batch.input_ids: required", code="schema_violation")
    ids = _int_matrix(src["input_ids"], "batch.input_ids")
    _rows_limit(len(ids), "batch.input_ids")
    out: dict[str, Any] = {"input_ids": ids}
    for key in ("attention_mask", "labels"):
        if src.get(key) is None:
            continue
        m = _int_matrix(src[key], f"batch.{key}")
        if [len(r) for r in m] != [len(r) for r in ids]:
            raise ValidationError(f"batch.{key}: shape differs from batch.input_ids", code="schema_violation")
        out[key] = m
    return _pad_ragged(out)


def _pad_ragged(batch: dict[str, Any]) -> dict[str, Any]:
    """Right-pad rows of different lengths (input 0, mask 0, label -100): masked positions are never scored."""
    lengths = [len(r) for r in batch["input_ids"]]
    width = max(lengths)
    if min(lengths) == width:
        return batch
    mask = batch.get("attention_mask") or [[1] * n for n in lengths]
    out = {
        "input_ids": [r + [0] * (width - len(r)) for r in batch["input_ids"]],
        "attention_mask": [r + [0] * (width - len(r)) for r in mask],
    }
    if "labels" in batch:
        out["labels"] = [r + [-100] * (width - len(r)) for r in batch["labels"]]
    return out


def _float_row(value: Any, where: str) -> list[float]:
    value = plain(value)
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise ValidationError(f"{where}: expected a list of numbers", code="schema_violation")
    return [float(v) for v in value]


def _datum(item: Any, where: str) -> dict[str, Any]:
    if isinstance(item, Datum):
        item = item.to_dict()
    if isinstance(item, Mapping):
        tokens, targets, weights = item.get("tokens"), item.get("target_tokens"), item.get("weights")
    elif hasattr(item, "model_input") and hasattr(item, "loss_fn_inputs"):  # a Tinker Datum
        mi = item.model_input
        tokens = mi.to_ints() if hasattr(mi, "to_ints") else mi
        inputs = item.loss_fn_inputs
        targets, weights = inputs.get("target_tokens"), inputs.get("weights")
        targets = getattr(targets, "data", targets) if not hasattr(targets, "tolist") else targets
        weights = getattr(weights, "data", weights) if not hasattr(weights, "tolist") else weights
    else:
        raise ValidationError(
            f"{where}: expected a Datum or a dict with tokens/target_tokens", code="schema_violation"
        )
    if tokens is None or targets is None:
        raise ValidationError(f"{where}: tokens and target_tokens are required", code="schema_violation")
    out: dict[str, Any] = {
        "tokens": _int_row(plain(tokens), f"{where}.tokens"),
        "target_tokens": _int_row(plain(targets), f"{where}.target_tokens"),
    }
    if len(out["tokens"]) != len(out["target_tokens"]):
        raise ValidationError(f"{where}: tokens and target_tokens differ in length", code="schema_violation")
    if weights is not None:
        out["weights"] = _float_row(weights, f"{where}.weights")
        if len(out["weights"]) != len(out["tokens"]):
            raise ValidationError(f"{where}: weights and tokens differ in length", code="schema_violation")
    return out


def forward_backward_body(batch_or_data: Any) -> dict[str, Any]:
    """`{"batch": {...}}` or `{"data": [...]}` for a forward_backward request."""
    if isinstance(batch_or_data, Batch):
        return {"batch": _batch_body(batch_or_data.to_dict())}
    if isinstance(batch_or_data, Mapping):
        if "batch" in batch_or_data or "data" in batch_or_data:
            raise ValidationError("pass the batch itself, not a request body", code="schema_violation")
        return {"batch": _batch_body(batch_or_data)}
    if isinstance(batch_or_data, Sequence) and not isinstance(batch_or_data, str | bytes):
        _rows_limit(len(batch_or_data), "data")
        return {"data": [_datum(d, f"data[{i}]") for i, d in enumerate(batch_or_data)]}
    raise ValidationError(
        "forward_backward expects a batch mapping (input_ids, attention_mask?, labels?), a Batch, "
        f"or a list of Datum; got {type(batch_or_data).__name__}",
        code="schema_violation",
    )


def prompt_fields(prompts: Any, prompt_tokens: Any) -> dict[str, Any]:
    """`{"prompts": [...]}` or `{"prompt_tokens": [[...]]}`; exactly one must be given."""
    if (prompts is None) == (prompt_tokens is None):
        raise ValidationError("sample: give exactly one of prompts or prompt_tokens", code="schema_violation")
    if prompts is not None:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValidationError("prompts: expected a non-empty list of strings", code="schema_violation")
        return {"prompts": prompts}
    return {"prompt_tokens": _int_matrix(prompt_tokens, "prompt_tokens")}
