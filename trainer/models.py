"""Base-model resolution and loading, LoRA attachment, and config-built benchmark models.

Everything here is offline: models are looked up on local disk only and every ``from_pretrained``
call passes ``local_files_only=True``. TenSafe ships one small base model,
``tensafe-tiny-llama`` (see ``base_models/tensafe-tiny-llama/README.md``); operators add more by
pointing ``TENSAFE_MODEL_DIR`` at directories of ``save_pretrained`` model folders.

torch/transformers/peft are imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BENCH_CONFIGS",
    "DEFAULT_BASE_MODEL",
    "ENV_MODEL_DIR",
    "LLAMA_ATTENTION_TARGETS",
    "LLAMA_MLP_TARGETS",
    "SHIPPED_MODELS_DIR",
    "ModelNotFoundError",
    "attach_lora",
    "build_model_from_config",
    "disable_dropout",
    "list_models",
    "load_base_model",
    "load_tokenizer",
    "pick_device_and_dtype",
    "resolve_model_ref",
]

SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "base_models"
DEFAULT_BASE_MODEL = "tensafe-tiny-llama"
ENV_MODEL_DIR = "TENSAFE_MODEL_DIR"

LLAMA_ATTENTION_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
# Other common causal-LM layouts, used only when the Llama names are absent.
_GPT2_TARGETS: tuple[str, ...] = ("c_attn", "c_proj")

# Benchmark-sized Llama configs that share the shipped tokenizer's vocabulary (8192).
BENCH_CONFIGS: dict[str, dict[str, int]] = {
    # 49.2M parameters with vocab 8192: 9 x (4*640^2 + 3*640*1728) + 8192*640 (tied) + norms.
    "llama-50m": {"hidden": 640, "layers": 9, "heads": 10, "intermediate": 1728},
    # Same shape as the shipped model (5.3M parameters).
    "llama-5m": {"hidden": 256, "layers": 4, "heads": 4, "intermediate": 688},
}


class ModelNotFoundError(FileNotFoundError):
    """No local model directory matches a model reference. ``searched`` lists the paths tried."""

    def __init__(self, model_ref: str, searched: Sequence[Path], available: Sequence[str]) -> None:
        self.model_ref = model_ref
        self.searched = list(searched)
        self.available = list(available)
        lines = [f"model {model_ref!r} not found locally (TenSafe never downloads models). Searched:"]
        lines += [f"  - {p}" for p in self.searched] or ["  (nothing)"]
        if not os.environ.get(ENV_MODEL_DIR):
            lines.append(f"  ({ENV_MODEL_DIR} is not set)")
        lines.append("Available: " + (", ".join(self.available) if self.available else "(none)"))
        super().__init__("\n".join(lines))


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _model_search_dirs() -> list[Path]:
    dirs = [SHIPPED_MODELS_DIR]
    env = os.environ.get(ENV_MODEL_DIR, "")
    for part in env.split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser())
    return dirs


def list_models() -> list[str]:
    """Names resolvable by :func:`resolve_model_ref` (shipped first, then ``TENSAFE_MODEL_DIR``)."""
    names: list[str] = []
    for d in _model_search_dirs():
        if not d.is_dir():
            continue
        for child in sorted(d.iterdir()):
            if _is_model_dir(child) and child.name not in names:
                names.append(child.name)
            elif child.is_dir():  # one level of "org/name" nesting
                for sub in sorted(child.iterdir()):
                    name = f"{child.name}/{sub.name}"
                    if _is_model_dir(sub) and name not in names:
                        names.append(name)
    return names


def resolve_model_ref(model_ref: str, *, allow_paths: bool = True) -> Path:
    """Resolve a model reference to a local ``save_pretrained`` directory (one with ``config.json``).

    ``model_ref`` is either an existing local directory path (only if ``allow_paths``; a service
    taking references from tenants should pass ``allow_paths=False``) or a name such as
    ``"tensafe-tiny-llama"`` or ``"org/name"``, looked up first in the shipped ``base_models/``
    directory and then in each directory of ``$TENSAFE_MODEL_DIR`` (``os.pathsep``-separated).
    Never touches the network. Raises :class:`ModelNotFoundError` listing every path searched.
    """
    if not isinstance(model_ref, str) or not model_ref.strip():
        raise ValueError("model_ref must be a non-empty string")
    ref = model_ref.strip()
    searched: list[Path] = []

    if allow_paths:
        as_path = Path(ref).expanduser()
        if as_path.exists():
            searched.append(as_path)
            if _is_model_dir(as_path):
                return as_path.resolve()
        elif as_path.is_absolute() or ref.startswith(("./", "../", "~")):
            raise ModelNotFoundError(ref, [as_path], list_models())

    # A name: relative, no "." / ".." components, so it cannot escape the model directories.
    parts = Path(ref).parts
    if Path(ref).is_absolute() or "\\" in ref or any(p in ("..", ".") for p in parts):
        raise ModelNotFoundError(ref, searched, list_models())
    for d in _model_search_dirs():
        cand = d / ref
        searched.append(cand)
        if _is_model_dir(cand):
            return cand.resolve()
    raise ModelNotFoundError(ref, searched, list_models())


def pick_device_and_dtype(prefer: str | None = None) -> tuple[torch.device, torch.dtype]:
    """Choose where and in what precision to run a model.

    ``prefer``: ``None``/``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` (error if CUDA is unavailable), or ``"mps"``. CUDA runs bf16 when the GPU
    supports it, else fp32; every other device runs fp32.
    """
    import torch

    p = (prefer or "auto").strip().lower()
    if p == "auto":
        p = "cuda" if torch.cuda.is_available() else "cpu"
    if p.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} requested but CUDA is not available")
        dev = torch.device(p)
        with torch.cuda.device(dev):
            bf16 = torch.cuda.is_bf16_supported()
        return dev, (torch.bfloat16 if bf16 else torch.float32)
    if p == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' requested but MPS is not available")
        return torch.device("mps"), torch.float32
    if p == "cpu":
        return torch.device("cpu"), torch.float32
    raise ValueError(f"unknown device preference {prefer!r} (auto, cpu, cuda, cuda:N, mps)")


def _zero_dropout_config(config: Any) -> list[str]:
    """Set every dropout probability in a (possibly nested) HF config to 0. Returns the keys changed."""
    changed: list[str] = []
    seen: set[int] = set()

    def visit(cfg: Any, prefix: str) -> None:
        if id(cfg) in seen:
            return
        seen.add(id(cfg))
        for key, val in list(vars(cfg).items()):
            if key.startswith("_"):
                continue
            k = key.lower()
            if (
                isinstance(val, (int, float))
                and not isinstance(val, bool)
                and ("dropout" in k or k.endswith("_pdrop") or k in ("drop_rate", "attn_drop_rate"))
            ):
                if val != 0:
                    changed.append(prefix + key)
                setattr(cfg, key, 0.0)
            elif hasattr(val, "to_dict") and hasattr(val, "model_type"):  # nested PretrainedConfig
                visit(val, f"{prefix}{key}.")

    visit(config, "")
    return changed


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Zero every dropout probability in ``model`` (config and ``nn.Dropout`` modules), in place.

    Per-sample gradients (DP-SGD) are only per-sample without dropout.
    """
    import torch

    cfg = getattr(model, "config", None)
    if cfg is not None:
        _zero_dropout_config(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for attr in ("attention_dropout", "dropout", "dropout_rate"):
            v = getattr(m, attr, None)
            if isinstance(v, float):
                setattr(m, attr, 0.0)
    return model


def load_tokenizer(model_ref: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local model (offline). Ensures a pad token and left padding."""
    from transformers import AutoTokenizer

    path = Path(model_ref) if isinstance(model_ref, os.PathLike) else resolve_model_ref(model_ref)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_base_model(
    model_ref: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from local disk, with all dropout disabled.

    ``device``/``dtype`` default to :func:`pick_device_and_dtype` (fp32 on CPU, bf16 on CUDA);
    fp16/bf16 checkpoints are upcast to ``dtype``. The model is returned in eval mode.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_ref(model_ref)
    if device is None:
        dev, auto_dtype = pick_device_and_dtype(None)
    else:
        dev = torch.device(device)
        auto_dtype = pick_device_and_dtype(dev.type if dev.type != "cuda" else str(dev))[1]
    dtype = dtype or auto_dtype

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    _zero_dropout_config(config)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in service logs
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype, local_files_only=True, trust_remote_code=False
        )
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.to(dev)
    disable_dropout(model)
    model.eval()
    tokenizer = load_tokenizer(path)
    return model, tokenizer


def _default_lora_targets(model: torch.nn.Module, include_mlp: bool) -> list[str]:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if set(LLAMA_ATTENTION_TARGETS) <= leaf_names:
        targets = list(LLAMA_ATTENTION_TARGETS)
        if include_mlp:
            targets += [t for t in LLAMA_MLP_TARGETS if t in leaf_names]
        return targets
    if "c_attn" in leaf_names:
        return list(_GPT2_TARGETS) + (["c_fc"] if include_mlp and "c_fc" in leaf_names else [])
    raise ValueError(
        "cannot infer LoRA target modules for this architecture; pass target_modules explicitly "
        f"(leaf module names include: {sorted(leaf_names)[:20]})"
    )


def _seed_for(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"tensafe/lora-init/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def attach_lora(
    model: PreTrainedModel,
    rank: int,
    alpha: float,
    target_modules: Sequence[str] | None = None,
    seed: int | None = None,
    *,
    include_mlp: bool = False,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter (``lora_dropout=0``, no bias); only LoRA params train.

    Default targets for Llama-style models: ``q_proj, k_proj, v_proj, o_proj`` (plus
    ``gate_proj, up_proj, down_proj`` with ``include_mlp=True``). With ``seed`` set, every
    ``lora_A`` matrix is initialised (Kaiming-uniform, as peft does) from a generator derived from
    ``(seed, module name)``, so the same seed gives an identical adapter on any device and the
    global RNG is left untouched; ``lora_B`` starts at zero, so the wrapped model initially
    computes exactly what the base model does.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        raise ValueError("rank must be positive")
    targets = list(target_modules) if target_modules else _default_lora_targets(model, include_mlp)
    disable_dropout(model)
    cfg = LoraConfig(
        r=int(rank),
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=True,
    )
    if seed is None:
        peft_model = get_peft_model(model, cfg, adapter_name=adapter_name)
    else:
        # peft draws lora_A from the global RNG: fork it so the caller's RNG stream is unchanged,
        # then overwrite lora_A deterministically below.
        with torch.random.fork_rng(devices=[]):
            peft_model = get_peft_model(model, cfg, adapter_name=adapter_name)
        with torch.no_grad():
            for name, module in peft_model.named_modules():
                lora_a = getattr(module, "lora_A", None)
                if not isinstance(lora_a, torch.nn.ModuleDict) or adapter_name not in lora_a:
                    continue
                w = lora_a[adapter_name].weight
                gen = torch.Generator(device="cpu").manual_seed(_seed_for(seed, name))
                fresh = torch.empty(w.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=gen)
                w.copy_(fresh.to(device=w.device, dtype=w.dtype))
                module.lora_B[adapter_name].weight.zero_()
    # Only LoRA parameters train (peft already froze the rest; be explicit for DP-SGD).
    for pname, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in pname)
    return peft_model


def build_model_from_config(
    hidden: int,
    layers: int,
    heads: int,
    vocab: int | None = None,
    *,
    intermediate: int | None = None,
    kv_heads: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    tie_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A randomly initialised (seeded) ``LlamaForCausalLM`` for benchmarks and tests, dropout 0.

    ``vocab`` defaults to the shipped tokenizer's vocabulary, and the special-token ids
    (``<pad>``=0, ``<s>``=1, ``</s>``=2) match it, so ``load_tokenizer("tensafe-tiny-llama")``
    works with the result. ``intermediate`` defaults to ~8/3 × hidden rounded up to a multiple of
    16. See :data:`BENCH_CONFIGS` for named sizes (``build_model_from_config(**BENCH_CONFIGS["llama-50m"])``).
    Built on CPU under a forked RNG (the global RNG is untouched), then moved to ``device``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise ValueError("hidden must be divisible by heads")
    if intermediate is None:
        intermediate = int(math.ceil(hidden * 8 / 3 / 16) * 16)
    if vocab is None:
        vocab = 8192
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_embeddings,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    if device is None and dtype is None:
        dev, dt = torch.device("cpu"), torch.float32
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dt = dtype or torch.float32
    model.to(device=dev, dtype=dt)
    model.eval()
    return model
