"""Request schemas of docs/API.md §7 (pydantic, strict: no coercion, unknown fields refused)
and the checks that need the model (vocabulary, context length).

Structure is pydantic's job; errors come back as ``[{"path": "batch.input_ids[3]",
"message": ...}]`` (API.md §3). Checks that depend on a training client's model run
after parsing, in :func:`check_forward_backward` and friends, with the same shape.
The JSON Schemas of these models feed ``/openapi.json``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tensafe.gateway.errors import ApiError, schema_violation
from tensafe.gateway.settings import ModelSpec

INT31 = 2**31 - 1
INT63 = 2**63 - 1
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ID_RE = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_ROWS = 256
MAX_ERRORS = 50

TokenId = Annotated[int, Field(ge=0, le=INT31)]
Label = Annotated[int, Field(ge=-100, le=INT31)]
Long = Annotated[int, Field(ge=-(2**63), le=INT63)]
Name = Annotated[str, Field(pattern=NAME_RE)]
Metadata = Annotated[
    dict[str, Any],
    Field(
        json_schema_extra={
            "maxProperties": 32,
            "propertyNames": {"pattern": META_KEY_RE.pattern},
            "additionalProperties": {"type": ["string", "number", "boolean", "null"], "maxLength": 1024},
        }
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_metadata(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return v
    if len(v) > 32:
        raise ValueError(f"at most 32 keys, got {len(v)}")
    for k, val in v.items():
        if not META_KEY_RE.match(k):
            raise ValueError(f"key {k[:80]!r} must match {META_KEY_RE.pattern}")
        if isinstance(val, str):
            if len(val) > 1024:
                raise ValueError(f"value of {k!r} longer than 1024 characters")
        elif isinstance(val, float):
            if not math.isfinite(val):
                raise ValueError(f"value of {k!r} must be finite")
        elif val is not None and not isinstance(val, int | bool):
            raise ValueError(f"value of {k!r} must be a string, number, boolean or null")
    return v


# -- training clients ------------------------------------------------------------------
class LoraConfig(Strict):
    rank: Annotated[int, Field(ge=1, le=256)] = 16
    alpha: Annotated[float, Field(gt=0, le=1e6)] = 32.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: (
        Annotated[
            list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,128}$")]], Field(min_length=1, max_length=64)
        ]
        | None
    ) = None

    @field_validator("dropout")
    @classmethod
    def _no_dropout(cls, v: float) -> float:
        # The trainer runs LoRA without dropout (and the command has no field for it):
        # refusing beats silently training something other than what was asked.
        if v != 0:
            raise ValueError("only 0 is supported by this server (LoRA runs without dropout)")
        return v


class DPConfig(Strict):
    enabled: bool = True
    noise_multiplier: Annotated[float, Field(ge=0, le=1e6)] = 1.0
    max_grad_norm: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    target_epsilon: Annotated[float, Field(gt=0, le=1e6)] = 8.0
    target_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    accountant: Literal["rdp", "prv"] = "rdp"
    sampling: Literal["client_batches", "poisson"] | None = None
    dataset_size: Annotated[int, Field(ge=1, le=INT63)] | None = None
    expected_batch_size: Annotated[int, Field(ge=1, le=MAX_ROWS)] | None = None

    @model_validator(mode="after")
    def _noise(self) -> DPConfig:
        if self.enabled and self.noise_multiplier <= 0:
            raise ValueError("noise_multiplier: must be > 0 when dp is enabled")
        return self


class CreateTrainingClient(Strict):
    model_ref: Annotated[str, Field(min_length=1, max_length=256)]
    lora_config: LoraConfig | None = None
    dp_config: DPConfig | None = None
    batch_size: Annotated[int, Field(ge=1, le=MAX_ROWS)] | None = None
    seed: Long | None = None
    dataset_id: Annotated[str, Field(pattern=ID_RE)] | None = None
    metadata: Metadata | None = None

    _meta = field_validator("metadata")(_check_metadata)

    @model_validator(mode="after")
    def _sampling(self) -> CreateTrainingClient:
        dp = self.dp_config
        if dp is not None and dp.sampling == "poisson" and self.dataset_id is None:
            raise ValueError("dp_config.sampling: 'poisson' needs dataset_id (the trainer samples from it)")
        return self


# -- commands of a client --------------------------------------------------------------
class Batch(Strict):
    input_ids: Annotated[
        list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_ROWS)
    ]
    attention_mask: list[list[Annotated[int, Field(ge=0, le=1)]]] | None = None
    labels: list[list[Label]] | None = None


class Datum(Strict):
    tokens: Annotated[list[TokenId], Field(min_length=1)]
    target_tokens: list[TokenId]
    weights: list[Annotated[float, Field(ge=0, le=1e6)]] | None = None


class ForwardBackward(Strict):
    batch: Batch | None = None
    data: Annotated[list[Datum], Field(min_length=1, max_length=MAX_ROWS)] | None = None
    loss_fn: Literal["cross_entropy"] = "cross_entropy"
    return_logprobs: bool = False

    @model_validator(mode="after")
    def _one(self) -> ForwardBackward:
        if (self.batch is None) == (self.data is None):
            raise ValueError("exactly one of 'batch' or 'data' is required")
        return self


class AdamParams(Strict):
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 1e-4
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    eps: Annotated[float, Field(gt=0, le=1)] = 1e-12
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.0


class OptimStep(Strict):
    adam_params: AdamParams | None = None


class TrainStep(Strict):
    adam_params: AdamParams | None = None
    loss_fn: Literal["cross_entropy"] = "cross_entropy"


class Sample(Strict):
    prompts: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=1024 * 1024)]], Field(min_length=1)]
        | None
    ) = None
    prompt_tokens: (
        Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)] | None
    ) = None
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 128
    temperature: Annotated[float, Field(ge=0, le=100)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=INT31)] = -1
    stop: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(max_length=16)] | None
    ) = None
    seed: Long | None = None
    num_samples: Annotated[int, Field(ge=1, le=16)] = 1

    @model_validator(mode="after")
    def _one(self) -> Sample:
        if (self.prompts is None) == (self.prompt_tokens is None):
            raise ValueError("exactly one of 'prompts' or 'prompt_tokens' is required")
        if self.top_k == 0:
            raise ValueError("top_k: must be -1 (off) or >= 1")
        return self


class SaveState(Strict):
    name: Name | None = None
    include_optimizer: bool = True
    metadata: Metadata | None = None

    _meta = field_validator("metadata")(_check_metadata)


class LoadState(Strict):
    artifact_id: Annotated[str, Field(pattern=ID_RE)]
    load_optimizer: bool = True


class CreatePackage(Strict):
    name: Name | None = None
    recipients: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(min_length=1, max_length=16)]
    max_proofs: Annotated[int, Field(ge=1, le=64)] = 16


class CancelBody(Strict):
    pass


# -- datasets -------------------------------------------------------------------------
class TextRecord(Strict):
    text: Annotated[str, Field(max_length=1024 * 1024)]


class TokenRecord(Strict):
    input_ids: Annotated[list[TokenId], Field(min_length=1)]
    labels: list[Label] | None = None


class RegisterDataset(Strict):
    name: Name
    records: Annotated[list[TextRecord], Field(min_length=1, max_length=1_000_000)] | None = None
    token_records: Annotated[list[TokenRecord], Field(min_length=1, max_length=1_000_000)] | None = None
    metadata: Metadata | None = None

    _meta = field_validator("metadata")(_check_metadata)

    @model_validator(mode="after")
    def _one(self) -> RegisterDataset:
        if (self.records is None) == (self.token_records is None):
            raise ValueError("exactly one of 'records' or 'token_records' is required")
        return self


M = TypeVar("M", bound=Strict)

REQUEST_MODELS: dict[str, type[Strict]] = {
    "CreateTrainingClientRequest": CreateTrainingClient,
    "ForwardBackwardRequest": ForwardBackward,
    "OptimStepRequest": OptimStep,
    "TrainStepRequest": TrainStep,
    "SampleRequest": Sample,
    "SaveStateRequest": SaveState,
    "CreatePackageRequest": CreatePackage,
    "LoadStateRequest": LoadState,
    "RegisterDatasetRequest": RegisterDataset,
    "CancelRequest": CancelBody,
}


# -- parsing and error shaping -----------------------------------------------------------
def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_FIELD_MSG = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)
_MESSAGES = {"missing": "field required", "extra_forbidden": "unknown field"}


def errors_of(exc: ValidationError) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for e in exc.errors(include_url=False, include_context=False, include_input=False):
        msg = _MESSAGES.get(e["type"], e["msg"]).removeprefix("Value error, ")
        loc = tuple(e["loc"])
        path = _path(loc)
        # "field: message" from a model validator names the field it is about
        m = _FIELD_MSG.match(msg) if e["type"] == "value_error" else None
        if m is not None:
            path = (path + "." if path else "") + m.group(1)
            msg = m.group(2)
        if path in seen:
            continue
        seen.add(path)
        out.append({"path": path, "message": msg})
        if len(out) >= MAX_ERRORS:
            break
    return out


def parse(model: type[M], body: dict[str, Any]) -> M:
    """Validate a decoded JSON object; 400 schema_violation with paths on failure."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise schema_violation(errors_of(exc)) from None


class Problems:
    """Collects semantic errors (model limits) with the same shape as schema errors."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def add(self, path: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"path": path, "message": message})

    def raise_if_any(self) -> None:
        if self.errors:
            raise schema_violation(self.errors)


def _check_row(p: Problems, path: str, row: list[int], spec: ModelSpec, *, labels: bool = False) -> None:
    if len(row) > spec.max_context_length:
        p.add(path, f"{len(row)} tokens exceed the model's max_context_length {spec.max_context_length}")
    vocab = spec.vocab_size
    for j, t in enumerate(row):
        if t >= vocab or (t < 0 and not (labels and t == -100)):
            what = "label" if labels else "token id"
            p.add(
                f"{path}[{j}]",
                f"{what} {t} outside the vocabulary [0, {vocab})" + (" (or -100)" if labels else ""),
            )
            return  # one error per row is enough


def check_forward_backward(req: ForwardBackward, spec: ModelSpec, max_rows: int) -> None:
    p = Problems()
    if req.batch is not None:
        b = req.batch
        if len(b.input_ids) > max_rows:
            p.add("batch.input_ids", f"at most {max_rows} rows")
        for i, row in enumerate(b.input_ids):
            _check_row(p, f"batch.input_ids[{i}]", row, spec)
        for name, other in (("attention_mask", b.attention_mask), ("labels", b.labels)):
            if other is None:
                continue
            if len(other) != len(b.input_ids):
                p.add(f"batch.{name}", f"has {len(other)} rows, input_ids has {len(b.input_ids)}")
                continue
            for i, (r, ids) in enumerate(zip(other, b.input_ids, strict=True)):
                if len(r) != len(ids):
                    p.add(f"batch.{name}[{i}]", f"has {len(r)} values, input_ids[{i}] has {len(ids)}")
                elif name == "labels":
                    _check_row(p, f"batch.labels[{i}]", r, spec, labels=True)
    else:
        assert req.data is not None
        if len(req.data) > max_rows:
            p.add("data", f"at most {max_rows} items")
        for i, d in enumerate(req.data):
            _check_row(p, f"data[{i}].tokens", d.tokens, spec)
            if len(d.target_tokens) != len(d.tokens):
                p.add(
                    f"data[{i}].target_tokens",
                    f"has {len(d.target_tokens)} values, tokens has {len(d.tokens)}",
                )
            else:
                _check_row(p, f"data[{i}].target_tokens", d.target_tokens, spec)
            if d.weights is not None and len(d.weights) != len(d.tokens):
                p.add(f"data[{i}].weights", f"has {len(d.weights)} values, tokens has {len(d.tokens)}")
    p.raise_if_any()


def check_sample(req: Sample, spec: ModelSpec, max_prompts: int) -> None:
    p = Problems()
    prompts = req.prompts if req.prompts is not None else req.prompt_tokens
    assert prompts is not None
    field = "prompts" if req.prompts is not None else "prompt_tokens"
    if len(prompts) > max_prompts:
        p.add(field, f"at most {max_prompts} prompts")
    if req.max_tokens >= spec.max_context_length:
        p.add("max_tokens", f"must leave room for the prompt in max_context_length {spec.max_context_length}")
    if req.prompt_tokens is not None:
        for i, row in enumerate(req.prompt_tokens):
            if len(row) + req.max_tokens > spec.max_context_length:
                p.add(
                    f"prompt_tokens[{i}]",
                    f"{len(row)} prompt tokens + max_tokens {req.max_tokens} exceed max_context_length {spec.max_context_length}",
                )
            else:
                _check_row(p, f"prompt_tokens[{i}]", row, spec)
    p.raise_if_any()


def check_dataset(req: RegisterDataset, max_context: int) -> None:
    p = Problems()
    for i, r in enumerate(req.token_records or ()):
        if len(r.input_ids) > max_context:
            p.add(
                f"token_records[{i}].input_ids",
                f"{len(r.input_ids)} tokens exceed max_context_length {max_context}",
            )
        if r.labels is not None:
            if len(r.labels) != len(r.input_ids):
                p.add(
                    f"token_records[{i}].labels",
                    f"has {len(r.labels)} values, input_ids has {len(r.input_ids)}",
                )
            elif any(t < 0 and t != -100 for t in r.labels):
                p.add(f"token_records[{i}].labels", "labels are token ids >= 0 or -100")
    p.raise_if_any()


def ensure(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise schema_violation([{"path": path, "message": message}])


__all__ = ["REQUEST_MODELS", "ApiError", "check_dataset", "check_forward_backward", "check_sample", "parse"]
