"""DPTrainer: the one object the worker touches for DP-SGD on a LoRA model.

    trainer = DPTrainer(peft_model, DPConfig(...))
    trainer.forward_backward(batch)        # client_batches mode: clip + accumulate
    trainer.optim_step(AdamParams(...))     # budget check, noise once, AdamW, account
    trainer.train_step_on_dataset(data)     # poisson mode: sample + fb + step
    trainer.dp_metrics(); blob = trainer.save_state(); trainer.load_state(blob)

Order inside a DP step (``optim_step``): (1) ask the accountant what ε would be
after this step and refuse with :class:`BudgetExceeded` if it passes the
target — nothing is changed; (2) add N(0, σ²C²) from the CSPRNG once to the
accumulated clipped sum and divide by the expected batch size; (3) AdamW;
(4) clear the accumulator and record the step with the accountant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from tensafe.trainer.accountant import ACCOUNTANTS, BudgetExceeded, PrivacyAccountant, calibrate_sigma
from tensafe.trainer.dp_engine import Batch, DPEngine
from tensafe.trainer.noise import GaussianNoiseSource
from tensafe.trainer.sampling import (
    SAMPLING_CLIENT,
    SAMPLING_MODES,
    SAMPLING_POISSON,
    PoissonSampler,
    sampling_certificate,
)
from tensafe.trainer.state import (
    adapter_tensors,
    export_peft_adapter,
    optimizer_tensors,
    pack_state,
    restore_adapter,
    restore_optimizer,
    unpack_state,
)
from torch import nn

__all__ = [
    "AdamParams",
    "BudgetExceeded",
    "DPConfig",
    "DPTrainer",
    "SAMPLING_CLIENT",
    "SAMPLING_POISSON",
    "SamplingModeError",
    "export_peft_adapter",
]

STATE_FORMAT = "tensafe.trainer.dp_state"
STATE_VERSION = 1


class SamplingModeError(ValueError):
    """The call does not fit the configured sampling mode (it would make ε dishonest)."""


@dataclass
class DPConfig:
    enabled: bool = True
    noise_multiplier: float | None = 1.0  # None: calibrate from target_epsilon and planned_steps
    max_grad_norm: float = 1.0
    target_epsilon: float | None = 8.0  # None: no budget (ε is still accounted)
    target_delta: float = 1e-5
    accountant: str = "rdp"  # "rdp" | "prv"
    sampling: str = SAMPLING_POISSON  # "poisson" | "client_batches"
    dataset_size: int | None = None  # poisson: the server dataset; client_batches: the declared size
    expected_batch_size: float | None = None  # q = expected_batch_size / dataset_size
    planned_steps: int | None = None  # only for calibrating noise_multiplier
    token_reduction: str = "sum"  # per-sample loss: "sum" (Tinker cross_entropy) or "mean" of its tokens

    @property
    def sample_rate(self) -> float:
        assert self.dataset_size and self.expected_batch_size
        return float(self.expected_batch_size) / float(self.dataset_size)

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}")
        if not self.dataset_size or self.dataset_size <= 0:
            raise ValueError("dataset_size is required with DP (declared size for client_batches)")
        if not self.expected_batch_size or not 0 < self.expected_batch_size <= self.dataset_size:
            raise ValueError("expected_batch_size must be in (0, dataset_size]")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError("max_grad_norm must be finite and > 0")
        if not 0 < self.target_delta < 1:
            raise ValueError("target_delta must be in (0, 1)")
        if self.target_delta >= 1.0 / self.dataset_size:
            raise ValueError("target_delta must be < 1/dataset_size")
        if self.target_epsilon is not None and not (
            self.target_epsilon > 0 and math.isfinite(self.target_epsilon)
        ):
            raise ValueError("target_epsilon must be finite and > 0 (or None for no budget)")
        if self.noise_multiplier is None:
            if self.target_epsilon is None or not self.planned_steps:
                raise ValueError("noise_multiplier=None needs target_epsilon and planned_steps to calibrate")
        elif not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError("noise_multiplier must be finite and > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DPConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class AdamParams:
    """Tinker's AdamParams. ``grad_clip_norm`` (0 = off) applies to non-private runs only:
    under DP the per-sample clip C already bounds sensitivity, and clipping the noisy
    mean afterwards is mere post-processing that biases the update, so it is ignored."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    @classmethod
    def coerce(cls, p: AdamParams | Mapping[str, Any] | None) -> AdamParams:
        if p is None:
            return cls()
        if isinstance(p, cls):
            return p
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(p).items() if k in names and v is not None})


def _seed_bytes(seed: bytes | int | str | None) -> bytes | None:
    if seed is None or isinstance(seed, bytes):
        return seed
    if isinstance(seed, int):
        return seed.to_bytes(32, "big", signed=False)
    return str(seed).encode()


def _as_sample(x: Any) -> Mapping[str, Any]:
    """A dataset element: a per-sample dict, or plain tokens (next-token LM on all of them)."""
    if isinstance(x, Mapping):
        return x
    toks = x.tolist() if isinstance(x, torch.Tensor | np.ndarray) else list(x)
    return {"input_ids": toks, "labels": toks}


class DPTrainer:
    """DP-SGD (or plain, with ``enabled=False``) training of a peft LoRA model."""

    def __init__(
        self,
        model: nn.Module,
        dp_config: DPConfig | Mapping[str, Any],
        seed: bytes | int | str | None = None,
        test_mode: bool = False,
    ) -> None:
        cfg = dp_config if isinstance(dp_config, DPConfig) else DPConfig.from_dict(dp_config)
        cfg.validate()
        if seed is not None and not test_mode:
            # A seeded noise stream is predictable: never let it slip into production by accident.
            raise ValueError("seed is only allowed with test_mode=True")
        if test_mode and seed is None:
            raise ValueError("test_mode needs a seed")
        self.config = cfg
        self.test_mode = test_mode
        self._seed = _seed_bytes(seed)
        self.engine = DPEngine(
            model, cfg.max_grad_norm, private=cfg.enabled, token_reduction=cfg.token_reduction
        )
        self.model = self.engine.model  # the peft model (never the Opacus wrapper)
        self.device = self.engine.device
        self.step = 0
        self._last_adam = AdamParams()
        self.optimizer = torch.optim.AdamW(
            self.engine.params,
            lr=self._last_adam.learning_rate,
            betas=(self._last_adam.beta1, self._last_adam.beta2),
            eps=self._last_adam.eps,
            weight_decay=self._last_adam.weight_decay,
        )
        self._names = {id(p): n for n, p in self.engine.named_params}
        self.accountant: PrivacyAccountant | None = None
        self.noise: GaussianNoiseSource | None = None
        self.sampler: PoissonSampler | None = None
        self.noise_multiplier: float | None = None
        if cfg.enabled:
            self.accountant = PrivacyAccountant(cfg.accountant, cfg.target_delta)
            self.noise = GaussianNoiseSource(self._seed)
            if cfg.noise_multiplier is None:
                assert cfg.target_epsilon is not None and cfg.planned_steps
                self.noise_multiplier = calibrate_sigma(
                    cfg.target_epsilon, cfg.target_delta, cfg.sample_rate, cfg.planned_steps, cfg.accountant
                )
            else:
                self.noise_multiplier = float(cfg.noise_multiplier)
            if cfg.sampling == SAMPLING_POISSON:
                assert cfg.dataset_size and cfg.expected_batch_size
                self.sampler = PoissonSampler(cfg.dataset_size, cfg.expected_batch_size, self._seed)

    # --- Tinker primitives ----------------------------------------------------------
    def forward_backward(self, batch: Batch, *, return_logprobs: bool = False) -> dict[str, Any]:
        """Clip and accumulate per-sample gradients of a client batch (client_batches / non-DP)."""
        if self.config.enabled and self.config.sampling == SAMPLING_POISSON:
            raise SamplingModeError(
                "poisson mode draws its own batches: use train_step_on_dataset (client batches would void ε)"
            )
        return self._forward_backward(batch, return_logprobs)

    def forward(self, batch: Batch, *, return_logprobs: bool = True) -> dict[str, Any]:
        """Loss and per-token logprobs without gradients or any state change."""
        return self.engine.forward(batch, return_logprobs=return_logprobs)

    def optim_step(self, adam_params: AdamParams | Mapping[str, Any] | None = None) -> dict[str, Any]:
        if self.config.enabled and self.config.sampling == SAMPLING_POISSON:
            raise SamplingModeError("poisson mode: use train_step_on_dataset")
        return self._optim_step(AdamParams.coerce(adam_params))

    def train_step_on_dataset(
        self,
        dataset: Sequence[Any],
        adam_params: AdamParams | Mapping[str, Any] | None = None,
        *,
        microbatch_size: int | None = None,
    ) -> dict[str, Any]:
        """One honest DP-SGD step: Poisson-sample ``dataset``, forward_backward, optim_step."""
        cfg = self.config
        if not cfg.enabled or cfg.sampling != SAMPLING_POISSON or self.sampler is None:
            raise SamplingModeError("train_step_on_dataset needs DP enabled with sampling='poisson'")
        if len(dataset) != cfg.dataset_size:
            raise ValueError(f"dataset has {len(dataset)} examples, config says {cfg.dataset_size}")
        if self.engine.pending_microbatches:
            raise RuntimeError("pending gradients from another route")
        adam = AdamParams.coerce(adam_params)
        self._check_budget()  # refuse before the sampler stream moves
        idx = self.sampler.sample()
        mb = microbatch_size or max(1, len(idx))
        loss_sum, tokens = 0.0, 0.0
        norms: list[float] = []
        try:
            for start in range(0, len(idx), mb):
                rep = self._forward_backward(
                    [_as_sample(dataset[int(i)]) for i in idx[start : start + mb]], False
                )
                loss_sum += rep["loss_sum"]
                tokens += rep["num_tokens"]
                norms += rep["clip"]["per_sample_norms"]
            out = self._optim_step(adam)
        except BaseException:
            # A failed step releases nothing; drop its partial clipped sums. (The sampler
            # has moved on, which costs no privacy: nothing was published for that draw.)
            self.engine.clear()
            raise
        C = cfg.max_grad_norm
        out |= {
            "batch_size": len(idx),
            "loss_sum": loss_sum,
            "loss_mean": loss_sum / tokens if tokens else 0.0,
            "num_tokens": tokens,
            "clip": {
                "fraction_clipped": (sum(n > C for n in norms) / len(norms)) if norms else 0.0,
                "mean_norm": float(np.mean(norms)) if norms else 0.0,
                "max_norm": max(norms) if norms else 0.0,
                "max_grad_norm": C,
            },
        }
        return out

    # --- internals -------------------------------------------------------------------
    def _forward_backward(self, batch: Batch, return_logprobs: bool) -> dict[str, Any]:
        rep = self.engine.forward_backward(batch, return_logprobs=return_logprobs)
        c = rep.get("clip")
        rep["metrics"] = {
            "loss:sum": rep["loss_sum"],
            "num_tokens:sum": rep["num_tokens"],
            "num_samples:sum": float(rep["num_samples"]),
        } | (
            {
                "clip_fraction:mean": c["fraction_clipped"],
                "grad_norm:mean": c["mean_norm"],
                "grad_norm:max": c["max_norm"],
            }
            if c
            else {}
        )
        return rep

    def _check_budget(self) -> float | None:
        if not self.config.enabled:
            return None
        assert self.accountant is not None and self.noise_multiplier is not None
        return self.accountant.check_budget(
            self.noise_multiplier, self.config.sample_rate, self.config.target_epsilon
        )

    def _set_hparams(self, adam: AdamParams) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = adam.learning_rate
            g["betas"] = (adam.beta1, adam.beta2)
            g["eps"] = adam.eps
            g["weight_decay"] = adam.weight_decay
        self._last_adam = adam

    def _optim_step(self, adam: AdamParams) -> dict[str, Any]:
        cfg = self.config
        eps_after = self._check_budget()  # raises BudgetExceeded before anything changes
        samples, microbatches = self.engine.pending_samples, self.engine.pending_microbatches
        if cfg.enabled:
            assert self.noise is not None and self.noise_multiplier is not None and cfg.expected_batch_size
            self.engine.write_noisy_mean(self.noise, self.noise_multiplier, cfg.expected_batch_size)
        else:
            self.engine.write_mean()
            if adam.grad_clip_norm and adam.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.engine.params, adam.grad_clip_norm)
        self._set_hparams(adam)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.engine.clear()
        if cfg.enabled:
            assert self.accountant is not None and self.noise_multiplier is not None
            self.accountant.step(self.noise_multiplier, cfg.sample_rate)
        self.step += 1
        out: dict[str, Any] = {
            "step": self.step,
            "samples": samples,
            "microbatches": microbatches,
            "learning_rate": adam.learning_rate,
        }
        if cfg.enabled:
            out |= {
                "epsilon_spent": eps_after,
                "noise_std": self.noise_multiplier * cfg.max_grad_norm,
                "expected_batch_size": cfg.expected_batch_size,
                "grad_clip_norm_ignored": bool(adam.grad_clip_norm),
            }
        return out

    # --- metrics / certificate -------------------------------------------------------------
    def dp_metrics(self) -> dict[str, Any]:
        cfg = self.config
        if not cfg.enabled:
            return {"enabled": False, "guarantee": "none", "epsilon_spent": None, "steps": self.step}
        assert self.accountant is not None and self.noise is not None and cfg.dataset_size
        m = self.accountant.dp_metrics(cfg.target_epsilon, cfg.sampling)
        m |= sampling_certificate(cfg.sampling, cfg.dataset_size)
        m |= {
            "enabled": True,
            "steps": self.step,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": cfg.sample_rate,
            "target_epsilon": cfg.target_epsilon,
            "max_grad_norm": cfg.max_grad_norm,
            "expected_batch_size": cfg.expected_batch_size,
            "epsilon_rdp": self.accountant.rdp_epsilon(),
            "neighboring_relation": "add_or_remove_one",
            "noise_source": self.noise.describe(),
            "test_mode": self.test_mode,
        }
        return m

    # --- state --------------------------------------------------------------------------------
    def save_state(self) -> bytes:
        """Adapter + AdamW + accountant + sampler + noise position + counters, as bytes.

        Pending (un-stepped) clipped sums are NOT saved: they are unnoised, data-derived
        gradients and must never be persisted. Save after ``optim_step``.
        """
        header = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "dp_config": self.config.to_dict(),
            "noise_multiplier": self.noise_multiplier,
            "test_mode": self.test_mode,
            "step": self.step,
            "accountant": self.accountant.state_dict() if self.accountant else None,
            "noise": self.noise.state_dict() if self.noise else None,
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "adam": asdict(self._last_adam),
            "param_names": [n for n, _ in self.engine.named_params],
            "dropped_pending_microbatches": self.engine.pending_microbatches,
        }
        tensors = adapter_tensors(self.engine.named_params) | optimizer_tensors(self.optimizer, self._names)
        return pack_state(header, tensors)

    _MUST_MATCH = ("enabled", "max_grad_norm", "target_delta", "accountant", "sampling", "dataset_size",
                   "expected_batch_size", "token_reduction")  # fmt: skip

    def load_state(self, blob: bytes) -> None:
        header, tensors = unpack_state(blob)
        if header.get("format") != STATE_FORMAT or header.get("version") != STATE_VERSION:
            raise ValueError("not a DPTrainer state of a supported version")
        saved = DPConfig.from_dict(header["dp_config"])
        for k in self._MUST_MATCH:
            if getattr(saved, k) != getattr(self.config, k):
                raise ValueError(
                    f"state was saved with {k}={getattr(saved, k)!r}, trainer has {getattr(self.config, k)!r}"
                )
        if bool(header["test_mode"]) != self.test_mode:
            raise ValueError("test_mode of the state and of the trainer differ")
        if header["param_names"] != [n for n, _ in self.engine.named_params]:
            raise ValueError("trainable parameters differ from the saved adapter")
        # Parse everything before mutating anything.
        acc = PrivacyAccountant.from_state_dict(header["accountant"]) if header["accountant"] else None
        restore_adapter(self.engine.named_params, tensors)
        restore_optimizer(self.optimizer, self.engine.named_params, tensors)
        self._set_hparams(AdamParams.coerce(header["adam"]))
        self.engine.clear()
        self.step = int(header["step"])
        if self.config.enabled:
            self.accountant = acc
            self.noise_multiplier = float(header["noise_multiplier"])
            assert self.noise is not None
            self.noise.load_state_dict(header["noise"])
            if self.sampler is not None:
                self.sampler.load_state_dict(header["sampler"])

    def export_adapter(self, directory: str) -> str:
        """Standard PEFT adapter files, loadable by ``PeftModel.from_pretrained``."""
        return str(export_peft_adapter(self.model, directory))
