"""Per-sample gradients, clipping and noisy aggregation for LoRA parameters.

Per-sample gradients come from Opacus ``GradSampleModule`` in *hooks* mode
with ``loss_reduction="sum"``: each trainable module's backward hook turns
(activations, backprops) into exact per-sample gradients. We then clip and
accumulate ourselves, because:

* ghost clipping zeroes gradients between backward passes and so drops earlier
  micro-batches when several ``forward_backward`` calls precede one
  ``optim_step`` (see FINDINGS); our own accumulator adds every clipped
  micro-batch into one running sum;
* Opacus' own optimizer divides by ``expected_batch_size * k`` and samples
  noise from torch's PRNG; we add CSPRNG noise once per step and divide by the
  declared expected batch size.

The engine also has a non-private path (plain autograd, mean over samples) so
DP and non-DP steps can be compared on the same model and batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from tensafe.trainer.losses import PackedBatch, collate, per_sample_loss, token_logprobs, token_nll
from tensafe.trainer.noise import GaussianNoiseSource
from torch import nn

CLIP_EPS = 1e-6  # factor = min(1, C / (norm + 1e-6)), as in Opacus

Batch = PackedBatch | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def per_sample_norms(grad_samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each sample's gradient across all parameters: (B,) float32/64."""
    if not grad_samples:
        raise ValueError("no per-sample gradients")
    B = grad_samples[0].shape[0]
    acc_dtype = torch.float64 if grad_samples[0].dtype == torch.float64 else torch.float32
    # One fused reduction per parameter, then the norm of the per-parameter norms.
    per_param = [torch.linalg.vector_norm(g.reshape(B, -1), dim=1, dtype=acc_dtype) for g in grad_samples]
    return torch.linalg.vector_norm(torch.stack(per_param, dim=1), dim=1)


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (norm + 1e-6)) per sample."""
    return (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)


@dataclass
class ClipStats:
    per_sample_norms: list[float]  # before clipping
    fraction_clipped: float
    mean_norm: float
    max_norm: float
    max_grad_norm: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_sample_norms": self.per_sample_norms,
            "fraction_clipped": self.fraction_clipped,
            "mean_norm": self.mean_norm,
            "max_norm": self.max_norm,
            "max_grad_norm": self.max_grad_norm,
        }


def _unwrap(model: nn.Module) -> nn.Module:
    return model._module if isinstance(model, GradSampleModule) else model


class DPEngine:
    """Accumulates clipped per-sample gradient sums (private) or plain sums (non-private)."""

    def __init__(
        self,
        model: nn.Module,
        max_grad_norm: float,
        *,
        private: bool = True,
        token_reduction: str = "sum",
        pad_token_id: int = 0,
    ) -> None:
        if private and not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
            raise ValueError("max_grad_norm must be finite and > 0")
        self.model = _unwrap(model)  # the peft model; peft calls must go to this, never the wrapper
        if hasattr(self.model, "autograd_grad_sample_hooks"):
            # Opacus hooks live on the submodules: a second engine would silently share them.
            raise ValueError("model already carries Opacus hooks (another DPEngine); use a fresh model")
        self.max_grad_norm = float(max_grad_norm)
        self.private = private
        self.token_reduction = token_reduction
        self.pad_token_id = pad_token_id
        self.named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError("model has no trainable parameters")
        self.params = [p for _, p in self.named_params]
        self.device = self.params[0].device
        self._gsm: GradSampleModule | None = None
        if private:
            self._gsm = GradSampleModule(
                self.model, batch_first=True, loss_reduction="sum", force_functorch=False
            )
        # Clipped sums are kept in at least float32 whatever the parameter dtype.
        self._accum = (
            [
                torch.zeros_like(p, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
                for p in self.params
            ]
            if private
            else []
        )
        self.pending_samples = 0
        self.pending_microbatches = 0

    # --- forward ------------------------------------------------------------------
    def _forward_loss(self, packed: PackedBatch, *, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        net = self._gsm if (self._gsm is not None and grad) else self.model
        with torch.set_grad_enabled(grad):
            out = net(
                input_ids=packed.input_ids,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
                use_cache=False,
            )
            nll = token_nll(out.logits, packed.targets)
            losses = per_sample_loss(nll, packed.weights, self.token_reduction)
        return nll, losses

    @staticmethod
    def _loss_report(
        nll: torch.Tensor, losses: torch.Tensor, packed: PackedBatch, logprobs: bool
    ) -> dict[str, Any]:
        w = packed.weights.to(nll.dtype)
        loss_sum = float((nll.detach() * w).sum())
        num_tokens = float(w.sum())
        rep: dict[str, Any] = {
            "loss_sum": loss_sum,
            "loss_mean": loss_sum / num_tokens if num_tokens > 0 else 0.0,
            "num_tokens": num_tokens,
            "num_samples": packed.batch_size,
            "per_sample_loss": losses.detach().float().cpu().tolist(),
        }
        if logprobs:
            rep["logprobs"] = token_logprobs(nll, packed)
        return rep

    def forward(self, batch: Batch, *, return_logprobs: bool = True) -> dict[str, Any]:
        """Loss (and per-token logprobs) without gradients; touches no state."""
        packed = collate(batch, self.pad_token_id).to(self.device)
        nll, losses = self._forward_loss(packed, grad=False)
        return self._loss_report(nll, losses, packed, return_logprobs)

    # --- private path -----------------------------------------------------------------
    def _per_sample(self, batch: Batch) -> tuple[list[torch.Tensor], PackedBatch, torch.Tensor, torch.Tensor]:
        if self._gsm is None:
            raise RuntimeError("engine was built with private=False")
        packed = collate(batch, self.pad_token_id).to(self.device)
        self.model.train()  # Opacus hooks only record activations in train mode
        with warnings.catch_warnings():
            # Frozen inputs make torch warn about full backward hooks; harmless here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            nll, losses = self._forward_loss(packed, grad=True)
            losses.sum().backward()
        grads: list[torch.Tensor] = []
        B = packed.batch_size
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, list):
                raise RuntimeError("grad_sample accumulated across backward passes; engine state corrupted")
            grads.append(torch.zeros((B, *p.shape), dtype=p.dtype, device=p.device) if gs is None else gs)
            # The unclipped aggregate in p.grad must never reach the optimizer.
            p.grad_sample = None
            p.grad = None
        return grads, packed, nll, losses

    def per_sample_gradients(self, batch: Batch) -> list[torch.Tensor]:
        """Exact per-sample gradients of each sample's loss, (B, *param.shape) per parameter.

        Leaves the accumulator untouched.
        """
        return self._per_sample(batch)[0]

    def forward_backward(self, batch: Batch, *, return_logprobs: bool = False) -> dict[str, Any]:
        """Private: add the clipped per-sample gradient sum of ``batch`` to the accumulator.

        Non-private engine: accumulate the plain gradient sum in ``p.grad``.
        """
        if not self.private:
            return self._forward_backward_nonprivate(batch, return_logprobs)
        grads, packed, nll, losses = self._per_sample(batch)
        norms = per_sample_norms(grads)
        factors = clip_factors(norms, self.max_grad_norm)
        with torch.no_grad():
            for acc, g in zip(self._accum, grads, strict=True):
                # acc += sum_i factor_i * g_i as one fused matrix-vector product.
                acc.view(-1).addmv_(g.reshape(g.shape[0], -1).t().to(acc.dtype), factors.to(acc.dtype))
        self.pending_samples += packed.batch_size
        self.pending_microbatches += 1
        nl = norms.detach().cpu()
        stats = ClipStats(
            per_sample_norms=nl.tolist(),
            fraction_clipped=float((nl > self.max_grad_norm).float().mean()),
            mean_norm=float(nl.mean()),
            max_norm=float(nl.max()),
            max_grad_norm=self.max_grad_norm,
        )
        rep = self._loss_report(nll, losses, packed, return_logprobs)
        rep["clip"] = stats.as_dict()
        return rep

    def clipped_sum(self) -> list[torch.Tensor]:
        """Copies of the accumulated clipped sums (for tests and diagnostics)."""
        return [a.clone() for a in self._accum]

    def write_noisy_mean(
        self, noise: GaussianNoiseSource, noise_multiplier: float, expected_batch_size: float
    ) -> None:
        """p.grad = (clipped_sum + N(0, σ²C²)) / expected_batch_size, noise drawn once for all params.

        Dividing by the *expected* (not realised) batch size keeps the estimate
        unbiased under Poisson sampling and hides the realised size.
        """
        std = noise_multiplier * self.max_grad_norm
        total = sum(a.numel() for a in self._accum)
        flat = noise.normal((total,), std, dtype=torch.float64, device=self.device)  # one host->device copy
        off = 0
        with torch.no_grad():
            for p, acc in zip(self.params, self._accum, strict=True):
                n = acc.numel()
                z = flat[off : off + n].view(acc.shape)
                off += n
                g = (acc.to(torch.float64) + z) / float(expected_batch_size)
                p.grad = g.to(p.dtype)

    def clear(self) -> None:
        for a in self._accum:
            a.zero_()
        for p in self.params:
            p.grad = None
            if hasattr(p, "grad_sample"):
                p.grad_sample = None
        self.pending_samples = 0
        self.pending_microbatches = 0

    # --- non-private path ------------------------------------------------------------
    def _forward_backward_nonprivate(self, batch: Batch, return_logprobs: bool) -> dict[str, Any]:
        packed = collate(batch, self.pad_token_id).to(self.device)
        self.model.train()
        nll, losses = self._forward_loss(packed, grad=True)
        losses.sum().backward()  # p.grad accumulates the plain sum across calls
        self.pending_samples += packed.batch_size
        self.pending_microbatches += 1
        return self._loss_report(nll, losses, packed, return_logprobs)

    def write_mean(self) -> None:
        """Non-private: p.grad = accumulated sum / number of samples (mean loss)."""
        n = max(self.pending_samples, 1)
        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.div_(n)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_params}
