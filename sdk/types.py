"""Wire types: plain dataclasses mirroring the JSON of docs/API.md, with `to_dict`/`from_dict`.

`to_dict()` leaves out fields that are None (the server then applies its default);
`from_dict()` ignores keys it does not know (the server may add fields within v1).
"""

from __future__ import annotations

import dataclasses
import types as _pytypes
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from .errors import ValidationError

__all__ = [
    "AdamParams",
    "Artifact",
    "AuditEntry",
    "AuditLogPage",
    "Batch",
    "ClipStats",
    "DPCertificate",
    "DPConfig",
    "DPMetrics",
    "DPStatus",
    "Dataset",
    "Datum",
    "EncryptionInfo",
    "ErrorInfo",
    "ForwardBackwardResult",
    "FutureState",
    "FutureStatus",
    "LedgerCheckpoint",
    "LoRAConfig",
    "LoadStateResult",
    "ModelInfo",
    "OptimStepResult",
    "Sample",
    "SampleResult",
    "SamplingParams",
    "SaveStateResult",
    "TrainStepResult",
    "TrainingClientStatus",
    "TrainingConfig",
    "WireType",
]

W = TypeVar("W", bound="WireType")

FutureStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, _pytypes.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    tp = _unwrap_optional(tp)
    if isinstance(tp, type) and issubclass(tp, WireType) and isinstance(value, dict):
        return tp.from_dict(value)
    if typing.get_origin(tp) is list and isinstance(value, list):
        (inner,) = typing.get_args(tp) or (Any,)
        return [_decode(inner, v) for v in value]
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, WireType):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


class WireType:
    """Mixin for the dataclasses below: JSON-shaped conversion both ways."""

    _hints: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; None-valued fields left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = _encode(v)
        return out

    @classmethod
    def from_user_dict(cls: type[W], data: Any) -> W:
        """Like `from_dict`, but unknown keys (typos) are an error: for configs written by users."""
        if not isinstance(data, dict):
            return cls.from_dict(data)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValidationError(f"{cls.__name__}: unknown keys {unknown}", code="schema_violation")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            tp = _unwrap_optional(hints.get(key, Any))
            if isinstance(value, dict) and isinstance(tp, type) and issubclass(tp, WireType):
                value = tp.from_user_dict(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_dict(cls: type[W], data: dict[str, Any]) -> W:
        """Build from a JSON dict; unknown keys ignored, missing ones take defaults."""
        if not isinstance(data, dict):
            raise ValidationError(f"{cls.__name__}.from_dict expects an object, got {type(data).__name__}")
        hints = cls.__dict__.get("_hints")
        if hints is None:
            hints = typing.get_type_hints(cls)
            cls._hints = hints
        kwargs = {
            f.name: _decode(hints.get(f.name, Any), data[f.name])
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name in data and f.init
        }
        return cls(**kwargs)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValidationError(message, code="schema_violation")


# ----------------------------------------------------------------- requests


@dataclass
class LoRAConfig(WireType):
    """LoRA adapter shape."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float | None = None
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        _check(1 <= int(self.rank) <= 256, "lora_config.rank: must be in 1..256")
        _check(float(self.alpha) > 0, "lora_config.alpha: must be > 0")


@dataclass
class DPConfig(WireType):
    """DP-SGD settings; see docs/API.md §7.2 for defaults and the meaning of `sampling`."""

    enabled: bool = True
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float = 8.0
    target_delta: float = 1e-5
    accountant: Literal["rdp", "prv"] = "rdp"
    sampling: Literal["client_batches", "poisson"] | None = None
    dataset_size: int | None = None
    expected_batch_size: int | None = None

    def __post_init__(self) -> None:
        _check(self.accountant in ("rdp", "prv"), "dp_config.accountant: must be 'rdp' or 'prv'")
        _check(
            self.sampling in (None, "client_batches", "poisson"),
            "dp_config.sampling: must be 'client_batches' or 'poisson'",
        )
        if self.enabled:
            _check(self.noise_multiplier > 0, "dp_config.noise_multiplier: must be > 0 when DP is enabled")
        _check(self.max_grad_norm > 0, "dp_config.max_grad_norm: must be > 0")
        _check(self.target_epsilon > 0, "dp_config.target_epsilon: must be > 0")
        _check(0 < self.target_delta < 1, "dp_config.target_delta: must be in (0, 1)")
        _check(self.dataset_size is None or self.dataset_size >= 1, "dp_config.dataset_size: must be >= 1")


@dataclass
class TrainingConfig(WireType):
    """Body of `POST /training_clients`."""

    model_ref: str
    lora_config: LoRAConfig = field(default_factory=LoRAConfig)
    dp_config: DPConfig = field(default_factory=DPConfig)
    batch_size: int = 8
    seed: int | None = None
    dataset_id: str | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(bool(self.model_ref), "model_ref: required")
        _check(1 <= int(self.batch_size) <= 256, "batch_size: must be in 1..256")


@dataclass
class AdamParams(WireType):
    """AdamW hyper-parameters of one optimizer step (defaults as in Tinker)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0


@dataclass
class SamplingParams(WireType):
    """Generation settings of `sample`; top_k -1 means off."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: list[str] | list[int] | None = None
    seed: int | None = None


@dataclass
class Batch(WireType):
    """Hugging Face-style causal-LM batch (labels -100 = not scored)."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]] | None = None
    labels: list[list[int]] | None = None


@dataclass
class Datum(WireType):
    """Tinker-style already-shifted example: predict target_tokens[i] after tokens[:i+1]."""

    tokens: list[int]
    target_tokens: list[int]
    weights: list[float] | None = None


# ----------------------------------------------------------------- results


@dataclass
class ErrorInfo(WireType):
    """`error` object of a failed future or of an HTTP error."""

    code: str
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class FutureState(WireType):
    """`GET /futures/{id}` answer."""

    future_id: str
    status: str = "pending"
    type: str | None = None
    client_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class ClipStats(WireType):
    """Per-sample gradient norms (before clipping) of one forward/backward."""

    max_grad_norm: float | None = None
    fraction_clipped: float | None = None
    mean_norm: float | None = None
    max_norm: float | None = None


@dataclass
class ForwardBackwardResult(WireType):
    """Result of `forward_backward`."""

    loss: float
    loss_sum: float | None = None
    num_tokens: int | None = None
    num_samples: int | None = None
    clip: ClipStats | None = None
    logprobs: list[list[float]] | None = None


@dataclass
class OptimStepResult(WireType):
    """Result of `optim_step`."""

    step: int
    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    num_samples: int | None = None
    learning_rate: float | None = None


@dataclass
class TrainStepResult(WireType):
    """Result of `train_step` (server-side Poisson batch: forward/backward + step)."""

    step: int
    loss: float | None = None
    loss_sum: float | None = None
    num_tokens: int | None = None
    num_samples: int | None = None
    clip: ClipStats | None = None
    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    learning_rate: float | None = None


@dataclass
class Sample(WireType):
    """One generated sequence."""

    completion: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_index: int = 0


@dataclass
class SampleResult(WireType):
    """Result of `sample`: samples ordered prompt-major."""

    samples: list[Sample] = field(default_factory=list)
    model_step: int | None = None


@dataclass
class EncryptionInfo(WireType):
    """How an artifact is encrypted at rest."""

    algorithm: str = "AES-256-GCM"
    key_id: str | None = None


@dataclass
class LedgerCheckpoint(WireType):
    """A signed Merkle checkpoint of the ledger."""

    tree_size: int
    root_hash: str


@dataclass
class DPCertificate(WireType):
    """The privacy guarantee attached to an artifact."""

    epsilon: float
    delta: float
    accountant: str | None = None
    sampling_mode: str | None = None
    guarantee: str | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    dataset_size: int | None = None
    ledger_seq: int | None = None
    checkpoint: LedgerCheckpoint | None = None


@dataclass
class SaveStateResult(WireType):
    """Result of `save_state`; also the artifact metadata object."""

    artifact_id: str
    content_hash: str | None = None
    encryption: EncryptionInfo = field(default_factory=EncryptionInfo)
    size: int | None = None
    name: str | None = None
    client_id: str | None = None
    step: int | None = None
    include_optimizer: bool | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | None = None
    dp_certificate: DPCertificate | None = None

    @property
    def encrypted(self) -> bool:
        """True when the artifact is stored encrypted (always, on TenSafe)."""
        return bool(self.encryption and self.encryption.algorithm)


Artifact = SaveStateResult


@dataclass
class LoadStateResult(WireType):
    """Result of `load_state`."""

    artifact_id: str
    step: int | None = None
    loaded_optimizer: bool | None = None


@dataclass
class DPMetrics(WireType):
    """`GET .../dp_metrics`; ε fields are None when DP is disabled."""

    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    steps: int = 0
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    accountant: str | None = None
    sampling_mode: str | None = None
    guarantee: str | None = None
    enabled: bool = True


@dataclass
class DPStatus(WireType):
    """The `dp` part of a training client object."""

    enabled: bool = True
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    target_epsilon: float | None = None
    target_delta: float | None = None
    accountant: str | None = None
    sampling: str | None = None
    sample_rate: float | None = None
    dataset_size: int | None = None
    expected_batch_size: int | None = None
    epsilon_spent: float | None = None
    guarantee: str | None = None


@dataclass
class TrainingClientStatus(WireType):
    """A training client object (`GET /training_clients/{id}`)."""

    client_id: str
    status: str = "creating"
    model_ref: str | None = None
    step: int = 0
    created_at: str | None = None
    lora_config: LoRAConfig | None = None
    batch_size: int | None = None
    dataset_id: str | None = None
    metadata: dict[str, Any] | None = None
    dp: DPStatus | None = None
    last_event_seq: int | None = None


@dataclass
class AuditEntry(WireType):
    """One ledger event of a training client."""

    seq: int
    partition: int
    event_type: str
    event_id: str
    ts_ms: int
    hash: str
    prev_hash: str
    command_id: str | None = None
    epoch: int | None = None


@dataclass
class AuditLogPage(WireType):
    """A page of audit entries; pass `next_after_seq` as `after_seq` for the next one."""

    entries: list[AuditEntry] = field(default_factory=list)
    next_after_seq: int | None = None
    has_more: bool = False


@dataclass
class Dataset(WireType):
    """A registered (server-side, encrypted) dataset."""

    dataset_id: str
    name: str | None = None
    num_records: int | None = None
    content_hash: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | None = None


@dataclass
class ModelInfo(WireType):
    """A base model the service can train or sample."""

    model_ref: str
    max_context_length: int | None = None
    vocab_size: int | None = None
    trainable: bool = True
    sampleable: bool = True


@dataclass
class PackageResult(WireType):
    """Result of `create_package`: a signed TSSP package stored in the service."""

    artifact_id: str
    package_id: str
    name: str | None = None
    manifest_sha256: str | None = None
    signer_key_id: str | None = None
    recipients: list[str] = field(default_factory=list)
    epsilon: float | None = None
    delta: float | None = None
    checkpoint_tree_size: int | None = None
    size: int | None = None


RESULT_TYPES: dict[str, type[WireType]] = {
    "create_training_client": TrainingClientStatus,
    "forward_backward": ForwardBackwardResult,
    "optim_step": OptimStepResult,
    "train_step": TrainStepResult,
    "sample": SampleResult,
    "save_state": SaveStateResult,
    "load_state": LoadStateResult,
    "create_package": PackageResult,
}
