"""Gateway configuration: one frozen value passed to ``create_app``.

Everything the gateway needs from the outside world is here: where the broker
is, which topics (prefix, partition count), the tenant store, the keyring it
shares with the trainer (to seal sensitive fields before they reach Kafka), the
models it accepts and the request limits of docs/API.md §4.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """A base model the service offers (``GET /models``)."""

    model_ref: str
    max_context_length: int
    vocab_size: int
    trainable: bool = True
    sampleable: bool = True
    # attention projections: the default LoRA targets when a client names none
    # (what the trainer's attach_lora picks for Llama-style models)
    default_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def to_json(self) -> dict[str, Any]:
        return {
            "model_ref": self.model_ref,
            "max_context_length": self.max_context_length,
            "vocab_size": self.vocab_size,
            "trainable": self.trainable,
            "sampleable": self.sampleable,
        }

    @classmethod
    def from_model_dir(cls, model_ref: str, directory: str | os.PathLike[str]) -> ModelSpec:
        """Limits from a Hugging Face model directory's ``config.json`` (read as JSON: the
        gateway never imports the trainer or torch)."""
        cfg = json.loads((Path(directory) / "config.json").read_text())
        return cls(model_ref, int(cfg["max_position_embeddings"]), int(cfg["vocab_size"]))


# The model shipped in trainer/base_models: scripts/build_base_model.py builds it with
# 512 positions and its tokenizer's vocabulary of 8192.
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("tensafe-tiny-llama", max_context_length=512, vocab_size=8192),
)


@dataclass(frozen=True)
class Settings:
    bootstrap: str
    keyring: Any  # tensafe.crypto.keyring.Keyring (typed loosely: the gateway only calls seal/open)
    tenants_path: Path
    topic_prefix: str = ""
    partitions: int = 4
    create_topics: bool = True  # ensure_topics at start-up (idempotent; checks partition counts)
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    max_body_bytes: int = 8 * MiB
    max_dataset_body_bytes: int = 64 * MiB
    # One command must fit one Kafka record (kafka_io.MAX_REQUEST_SIZE, 1 MiB);
    # leave room for the record's own framing.
    max_command_bytes: int = MiB - 16 * 1024
    max_batch_rows: int = 256
    max_prompts: int = 64
    max_samples_per_prompt: int = 16
    max_sample_tokens: int = 4096
    max_wait_s: float = 30.0
    cancel_wait_s: float = 5.0  # how long DELETE /futures/{id} waits for the trainer's verdict
    dataset_wait_s: float = 10.0  # how long a Poisson client's creation waits for its dataset
    idempotency_ttl_s: float = 24 * 3600.0
    # Rebuild futures of not-yet-accepted commands (and their idempotency fingerprints)
    # from tensafe.commands at start-up, so a retry after a restart is replayed, not re-sent.
    follow_commands: bool = True
    # Also keep following tensafe.commands after start-up: only useful with several gateways
    # (a command another gateway published is visible here before the trainer accepts it;
    # after CommandAccepted every gateway knows it from the ledger anyway). Costs a consumer
    # per partition that wakes on every command, so it is off by default.
    follow_commands_live: bool = False
    # Process-wide GC tuning (freeze the replayed read model, fewer young collections):
    # only for a process that is just the gateway (python -m tensafe.gateway.app sets it).
    tune_gc: bool = False
    rate_limit_rps: float | None = None  # per tenant; None = no limit
    rate_limit_burst: float = 50.0
    version: str = "1.0.0"
    extra: dict[str, Any] = field(default_factory=dict)

    def model(self, model_ref: str) -> ModelSpec | None:
        for m in self.models:
            if m.model_ref == model_ref:
                return m
        return None

    @property
    def max_context_length(self) -> int:
        """Largest context of any model (bounds model-less inputs such as dataset token records)."""
        return max(m.max_context_length for m in self.models)

    @classmethod
    def from_env(cls, keyring: Any, **overrides: Any) -> Settings:
        """``TENSAFE_KAFKA_BOOTSTRAP``, ``TENSAFE_TOPIC_PREFIX``, ``TENSAFE_PARTITIONS``,
        ``TENSAFE_TENANTS`` (path of the tenant store)."""
        values: dict[str, Any] = {
            "bootstrap": os.environ.get("TENSAFE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            "topic_prefix": os.environ.get("TENSAFE_TOPIC_PREFIX", ""),
            "partitions": int(os.environ.get("TENSAFE_PARTITIONS", "4")),
            "tenants_path": Path(os.environ.get("TENSAFE_TENANTS", "tenants.json")),
            "keyring": keyring,
        }
        values.update(overrides)
        return cls(**values)
