"""One training client inside the worker: base model + LoRA + DPTrainer, and the
translation of decoded commands into outcome-event payloads.

Plain synchronous code (the worker runs it in a thread). Inputs arrive already
decrypted; outputs that are sensitive are returned in clear and sealed by the caller.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from tensafe.trainer.accountant import BudgetExceeded
from tensafe.trainer.dp_trainer import AdamParams, DPConfig, DPTrainer, SamplingModeError


class CommandError(Exception):
    """A command that cannot run; becomes a CommandFailed event with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    event_type: str
    payload: dict[str, Any]
    state_changed: bool = False
    sealed_result: bytes | None = None  # clear bytes the worker must seal into the payload


def _adam(p: dict) -> AdamParams:
    return AdamParams(
        learning_rate=p["learning_rate"],
        beta1=p["beta1"],
        beta2=p["beta2"],
        eps=p["eps"],
        weight_decay=p["weight_decay"],
    )


def dp_config_of(create: dict) -> DPConfig:
    sampling = create["sampling_mode"]
    dataset_size = create.get("dataset_size")
    if not create["dp_enabled"]:
        dataset_size = dataset_size or 1
    elif not dataset_size and sampling == "client_batches":
        # No declared dataset size: account with q = 1 (every step sees the whole "dataset"),
        # i.e. no amplification by subsampling — the only honest number without one.
        dataset_size = max(1, int(create["expected_batch_size"]))
    return DPConfig(
        enabled=create["dp_enabled"],
        noise_multiplier=create["noise_multiplier"],
        max_grad_norm=create["max_grad_norm"],
        target_epsilon=create["target_epsilon"] if create["target_epsilon"] > 0 else None,
        target_delta=create["target_delta"],
        accountant=create["accountant"],
        sampling=sampling,
        dataset_size=dataset_size,
        expected_batch_size=float(create["expected_batch_size"]),
    )


class ClientSession:
    def __init__(self, client_id: str, tenant_id: str, create: dict, *, test_mode: bool = False) -> None:
        from tensafe.trainer.models import attach_lora, load_base_model

        self.client_id = client_id
        self.tenant_id = tenant_id
        self.create = create
        base, self.tokenizer = load_base_model(create["model_ref"])
        targets = list(create.get("target_modules") or []) or None
        seed = create.get("seed")
        self.model = attach_lora(base, create["lora_rank"], create["lora_alpha"], targets, seed=seed)
        self.test_mode = test_mode
        self.trainer = DPTrainer(
            self.model, dp_config_of(create), seed=seed if test_mode else None, test_mode=test_mode
        )
        self.snapshot_offset = -1  # command offset reflected in the last snapshot
        self._dataset_cache: dict[str, list[dict]] = {}

    # -- commands -----------------------------------------------------------
    def forward_backward(self, payload: dict, batch: dict) -> Outcome:
        t0 = time.perf_counter()
        tb = _batch_for_trainer(batch)
        try:
            if payload.get("forward_only"):
                rep = self.trainer.forward(tb, return_logprobs=payload["return_logprobs"])
            else:
                rep = self.trainer.forward_backward(tb, return_logprobs=payload["return_logprobs"])
        except SamplingModeError as exc:
            raise CommandError("sampling_mode", str(exc)) from exc
        except ValueError as exc:
            raise CommandError("invalid_batch", str(exc)) from exc
        clip = rep.get("clip") or {}
        logprobs = rep.get("logprobs")
        return Outcome(
            "ForwardBackwardCompleted",
            {
                "num_samples": int(rep["num_samples"]),
                "num_tokens": int(rep["num_tokens"]),
                "loss": float(rep.get("loss_mean", rep.get("loss", 0.0))),
                "loss_sum": float(rep["loss_sum"]),
                "max_grad_norm": float(clip.get("max_grad_norm", self.trainer.config.max_grad_norm)),
                "fraction_clipped": float(clip.get("fraction_clipped", 0.0)),
                "mean_grad_norm": float(clip.get("mean_norm", 0.0)),
                "max_sample_grad_norm": float(clip.get("max_norm", 0.0)),
                "batch_sha256": "",
                "duration_ms": (time.perf_counter() - t0) * 1000,
                "result_ciphertext": None,
            },
            sealed_result=json.dumps(_plain(logprobs)).encode() if logprobs is not None else None,
        )

    def optim_step(self, payload: dict) -> Outcome:
        t0 = time.perf_counter()
        try:
            rep = self.trainer.optim_step(_adam(payload))
        except SamplingModeError as exc:
            raise CommandError("sampling_mode", str(exc)) from exc
        except BudgetExceeded as exc:
            return self._refused(exc)
        return Outcome(
            "OptimStepApplied", self._step_payload(rep, payload["learning_rate"], t0), state_changed=True
        )

    def train_step(self, payload: dict, texts: list[str]) -> Outcome:
        t0 = time.perf_counter()
        dataset = self._tokenized(texts, payload.get("max_length", 128))
        try:
            rep = self.trainer.train_step_on_dataset(dataset, _adam(payload))
        except BudgetExceeded as exc:
            return self._refused(exc)
        m = self.trainer.dp_metrics()
        return Outcome(
            "TrainStepCompleted",
            {
                "step": int(rep["step"]),
                "batch_size": int(rep["batch_size"]),
                "num_tokens": int(rep["num_tokens"]),
                "loss": float(rep["loss_mean"]),
                "fraction_clipped": float(rep["clip"]["fraction_clipped"]),
                "epsilon_spent": float(m.get("epsilon_spent") or 0.0),
                "sample_rate": float(m.get("sample_rate") or 0.0),
                "duration_ms": (time.perf_counter() - t0) * 1000,
            },
            state_changed=True,
        )

    def sample(self, payload: dict, inputs: dict) -> Outcome:
        from tensafe.trainer.generation import generate

        t0 = time.perf_counter()
        stop = inputs.get("stop") or None
        completions = generate(
            self.trainer.model,
            self.tokenizer,
            prompts=inputs.get("prompts") or None,
            prompt_tokens=inputs.get("prompt_tokens") or None,
            max_tokens=payload["max_tokens"],
            temperature=payload["temperature"],
            top_p=payload["top_p"],
            top_k=max(0, payload["top_k"]),  # Tinker's -1 means "off", like 0 here
            stop=stop,
            seed=payload.get("seed"),
            num_samples=payload["num_samples"],
        )
        out = [
            {
                "text": c.text,
                "tokens": list(c.tokens),
                "logprobs": [float(x) for x in c.logprobs],
                "finish_reason": c.finish_reason,
                "prompt_tokens": int(c.prompt_tokens),
                "completion_tokens": int(c.completion_tokens),
            }
            for c in completions
        ]
        n_prompts = len(inputs.get("prompts") or inputs.get("prompt_tokens") or [])
        return Outcome(
            "SampleCompleted",
            {
                "num_prompts": n_prompts,
                "num_samples": len(out),
                "prompt_tokens": sum(c["prompt_tokens"] for c in out),
                "completion_tokens": sum(c["completion_tokens"] for c in out),
                "temperature": payload["temperature"],
                "max_tokens": payload["max_tokens"],
                "duration_ms": (time.perf_counter() - t0) * 1000,
                "prompts_ciphertext": b"",
                "completions_ciphertext": b"",
            },
            sealed_result=json.dumps(out).encode(),
        )

    def dp_metrics(self) -> dict:
        return self.trainer.dp_metrics()

    # -- helpers --------------------------------------------------------------
    def _refused(self, exc: BudgetExceeded) -> Outcome:
        return Outcome(
            "BudgetRefused",
            {
                "step_would_be": self.trainer.step + 1,
                "epsilon_would_be": float(exc.epsilon_would_be),
                "target_epsilon": float(exc.target_epsilon),
                "delta": float(self.trainer.config.target_delta),
            },
        )

    def _step_payload(self, rep: dict, lr: float, t0: float) -> dict:
        cfg = self.trainer.config
        m = self.trainer.dp_metrics() if cfg.enabled else {}
        return {
            "step": int(rep["step"]),
            "learning_rate": float(lr),
            "noise_multiplier": float(self.trainer.noise_multiplier or 0.0),
            "sample_rate": float(cfg.sample_rate) if cfg.enabled else 0.0,
            "samples_in_step": int(rep.get("samples", 0)),
            "expected_batch_size": float(cfg.expected_batch_size or 0.0),
            "epsilon_spent": float(m.get("epsilon_spent") or 0.0),
            "delta": float(cfg.target_delta),
            "accountant": cfg.accountant,
            "sampling_mode": cfg.sampling,
            "duration_ms": (time.perf_counter() - t0) * 1000,
        }

    def _tokenized(self, records: list, max_length: int) -> list[dict]:
        """Dataset records (texts, or token rows {input_ids, labels?}) as training samples."""
        key = f"{len(records)}:{max_length}:{id(records)}"
        if key not in self._dataset_cache:
            rows = []
            for rec in records:
                if isinstance(rec, str):
                    ids = self.tokenizer(rec, truncation=True, max_length=max_length)["input_ids"]
                    rows.append({"input_ids": ids, "labels": ids})
                else:
                    ids = list(rec["input_ids"])[:max_length]
                    labels = list(rec.get("labels") or rec["input_ids"])[:max_length]
                    rows.append({"input_ids": ids, "labels": labels})
            self._dataset_cache = {key: rows}
        return self._dataset_cache[key]


def _plain(x: Any) -> Any:
    """Tensors / arrays (and lists of them) as plain lists for JSON."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _batch_for_trainer(batch: dict) -> Any:
    """TokenBatch (Avro record) -> the forms DPTrainer accepts."""
    ids = batch["input_ids"]
    if batch.get("target_tokens"):
        samples = []
        for i, toks in enumerate(ids):
            s = {"input_ids": toks, "target_tokens": batch["target_tokens"][i]}
            if batch.get("weights"):
                s["weights"] = batch["weights"][i]
            samples.append(s)
        return samples
    labels = batch["labels"] if batch.get("labels") else ids
    if len({len(r) for r in ids}) > 1:  # ragged rows: per-sample dicts (the collator pads them)
        masks = batch.get("attention_mask") or []
        samples = []
        for i, row in enumerate(ids):
            s: dict[str, Any] = {"input_ids": row, "labels": labels[i]}
            if i < len(masks):
                s["attention_mask"] = masks[i]
            samples.append(s)
        return samples
    out: dict[str, Any] = {"input_ids": ids}
    if batch.get("attention_mask"):
        out["attention_mask"] = batch["attention_mask"]
    out["labels"] = batch["labels"] if batch.get("labels") else ids
    return out
