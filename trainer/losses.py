"""Batches and per-sample token losses.

DP-SGD clips *per-sample* gradients, so every sample's loss must depend on that
sample alone: no mean over the batch's tokens (that couples samples through
the token count). Each sample's loss is the weighted sum of its token NLLs
(Tinker's ``cross_entropy``: ``-sum(weights * logprobs[target_tokens])``), or,
with ``token_reduction="mean"``, that sum divided by the sample's own weight.

Two input conventions are accepted and normalised to one :class:`PackedBatch`
where ``logits[:, t]`` predicts ``targets[:, t]``:

* Tinker: ``input_ids``/``model_input`` with ``target_tokens`` (already shifted
  by the client) and optional ``weights``.
* Hugging Face: ``input_ids``, ``attention_mask``, ``labels`` aligned with the
  inputs (shifted here), ``-100`` ignored.

Ragged per-sample lists are right-padded. Position ids come from the attention
mask, so left padding is also correct.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    position_ids: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T) long; 0 where weight is 0
    weights: torch.Tensor  # (B, T) float32; 0 on padding and ignored tokens
    lengths: list[int]  # real (unpadded) tokens per sample
    target_mask: torch.Tensor | None = None  # (B, T) bool: position has a real target (for logprobs)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.targets.to(device),
            self.weights.to(device),
            self.lengths,
            None if self.target_mask is None else self.target_mask.to(device),
        )


def _as_long_2d(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.long) if not isinstance(x, torch.Tensor) else x.long()
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError("token tensors must be (batch, time)")
    return t


def _tokens_of(sample: Mapping[str, Any]) -> list[int]:
    x = sample.get("input_ids", sample.get("model_input"))
    if x is None:
        raise ValueError("sample has neither 'input_ids' nor 'model_input'")
    if isinstance(x, Mapping) and "chunks" in x:  # Tinker ModelInput as a dict
        return [int(t) for c in x["chunks"] for t in c["tokens"]]
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).tolist()
    return [int(t) for t in x]


def _to_list(x: Any) -> list[Any]:
    return x.reshape(-1).tolist() if isinstance(x, torch.Tensor) else list(x)


def _position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _from_labels(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> PackedBatch:
    # HF convention: logits[t] predicts labels[t + 1].
    targets = torch.zeros_like(ids)
    valid = torch.zeros(ids.shape, dtype=torch.bool)
    nxt = labels[:, 1:]
    valid[:, :-1] = (nxt != IGNORE_INDEX) & mask[:, 1:].bool() & mask[:, :-1].bool()
    targets[:, :-1] = torch.where(valid[:, :-1], nxt, torch.zeros_like(nxt))
    return PackedBatch(
        ids, mask, _position_ids(mask), targets, valid.float(), [int(n) for n in mask.sum(1).tolist()], valid
    )


def _from_targets(
    ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> PackedBatch:
    if targets.shape != ids.shape or weights.shape != ids.shape:
        raise ValueError("target_tokens/weights must have the shape of the inputs")
    w = weights.float() * mask.float()
    # Tinker scores every target token (weights only scale the loss); padding gets token 0.
    targets = torch.where(mask.bool(), targets, torch.zeros_like(targets))
    lengths = [int(n) for n in mask.sum(1).tolist()]
    return PackedBatch(ids, mask, _position_ids(mask), targets, w, lengths, mask.bool())


def _collate_ragged(samples: Sequence[Mapping[str, Any]], pad_token_id: int) -> PackedBatch:
    if len(samples) == 0:
        raise ValueError("empty batch")
    toks = [_tokens_of(s) for s in samples]
    T = max(len(t) for t in toks)
    if T == 0:
        raise ValueError("every sample is empty")
    B = len(samples)
    ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, t in enumerate(toks):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        own = samples[i].get("attention_mask")
        if own is None:
            mask[i, : len(t)] = 1
        else:  # a row that carries its own padding (e.g. left-padded by a tokenizer)
            own_l = _to_list(own)
            if len(own_l) != len(t):
                raise ValueError("attention_mask must have the length of input_ids")
            mask[i, : len(t)] = torch.tensor(own_l, dtype=torch.long)
    first = samples[0]
    lfi = first.get("loss_fn_inputs", first)
    if "labels" in first:
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        for i, s in enumerate(samples):
            lab = _to_list(s["labels"])
            if len(lab) != len(toks[i]):
                raise ValueError("labels must have the length of input_ids")
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        return _from_labels(ids, mask, labels)
    if "target_tokens" in lfi:
        targets = torch.zeros((B, T), dtype=torch.long)
        weights = torch.zeros((B, T), dtype=torch.float32)
        for i, s in enumerate(samples):
            li = s.get("loss_fn_inputs", s)
            tt = _to_list(li["target_tokens"])
            w = _to_list(li["weights"]) if li.get("weights") is not None else [1.0] * len(tt)
            if len(tt) != len(toks[i]) or len(w) != len(tt):
                raise ValueError("target_tokens/weights must have the length of the model input")
            targets[i, : len(tt)] = torch.tensor(tt, dtype=torch.long)
            weights[i, : len(w)] = torch.tensor(w, dtype=torch.float32)
        return _from_targets(ids, mask, targets, weights)
    raise ValueError("samples need 'labels' (HF) or 'target_tokens' (Tinker)")


def collate(
    batch: PackedBatch | Mapping[str, Any] | Sequence[Mapping[str, Any]], pad_token_id: int = 0
) -> PackedBatch:
    """Normalise any accepted batch form to a :class:`PackedBatch` (on CPU)."""
    if isinstance(batch, PackedBatch):
        return batch
    if isinstance(batch, Mapping):
        ids = _as_long_2d(batch["input_ids"])
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else _as_long_2d(mask)
        if mask.shape != ids.shape:
            raise ValueError("attention_mask must have the shape of input_ids")
        if "labels" in batch:
            return _from_labels(ids, mask, _as_long_2d(batch["labels"]))
        if "target_tokens" in batch:
            targets = _as_long_2d(batch["target_tokens"])
            w = batch.get("weights")
            weights = (
                torch.ones(ids.shape)
                if w is None
                else torch.as_tensor(w, dtype=torch.float32).reshape(ids.shape)
            )
            return _from_targets(ids, mask, targets, weights)
        raise ValueError("batch needs 'labels' (HF) or 'target_tokens' (Tinker)")
    return _collate_ragged(list(batch), pad_token_id)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood (B, T), computed in float32 at least."""
    B, T, V = logits.shape
    lg = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return F.cross_entropy(lg.reshape(B * T, V), targets.reshape(B * T), reduction="none").view(B, T)


def token_logprobs(nll: torch.Tensor, packed: PackedBatch) -> list[torch.Tensor]:
    """Per-sample logprobs of the target tokens (CPU float32), NaN where there is no target."""
    lp = (-nll.detach()).float().cpu()
    if packed.target_mask is not None:
        lp = lp.masked_fill(~packed.target_mask.cpu(), float("nan"))
    real = packed.attention_mask.bool().cpu()
    return [lp[i][real[i]] for i in range(packed.batch_size)]  # real tokens only, left or right padding


def per_sample_loss(nll: torch.Tensor, weights: torch.Tensor, token_reduction: str = "sum") -> torch.Tensor:
    """(B,) loss of each sample from its own tokens only."""
    w = weights.to(nll.dtype)
    loss = (nll * w).sum(1)
    if token_reduction == "sum":
        return loss
    if token_reduction == "mean":
        ws = w.sum(1)
        return torch.where(ws > 0, loss / ws.clamp(min=torch.finfo(ws.dtype).tiny), torch.zeros_like(loss))
    raise ValueError("token_reduction must be 'sum' or 'mean'")
