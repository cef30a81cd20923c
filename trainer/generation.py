"""Text generation (sampling) with a KV cache, and prompt log-probabilities.

Plain functions, no module state. Semantics (Tinker-style):

* ``logprobs`` of a completion are ``log_softmax`` of the model's RAW logits at each step,
  evaluated at the sampled token, i.e. under the model's own distribution, not the
  temperature/top-p/top-k-adjusted one it was sampled from.
* ``tokens`` and ``logprobs`` include the token that ended generation (EOS, a stop token id, or
  the token that completed a stop string), because it was sampled and an RL update needs it;
  ``text`` excludes EOS and stops before the stop string.
* Rows are ``prompt-major``: ``[p0 s0, p0 s1, ..., p1 s0, ...]`` for ``num_samples`` samples per
  prompt. Each row draws its randomness from its own ``torch.Generator`` seeded from
  ``(seed, row index)``, so a seeded call is reproducible and independent of batching; the global
  RNG is never used.
* ``temperature == 0`` is greedy decoding.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["Completion", "FinishReason", "generate", "prompt_logprobs", "row_seed"]

FinishReason = Literal["stop", "length", "eos"]


@dataclass
class Completion:
    """One sampled continuation."""

    text: str
    tokens: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_index: int = 0
    sample_index: int = 0
    stop: str | int | None = field(default=None)  # which stop string / token id matched, if any


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row``'s generator for a call with ``seed`` (63-bit, stable across versions)."""
    digest = hashlib.sha256(f"tensafe/sample/{int(seed)}/{int(row)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # Opacus GradSampleModule (and its variants) keep the wrapped module as child ``_module``;
    # they forward attribute lookups to it, so test the registered children, not hasattr.
    while "_module" in getattr(model, "_modules", {}):
        model = model._modules["_module"]  # type: ignore[assignment]
    return model


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _max_positions(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None) -> set[int]:
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return ids


def _pad_id(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None) -> int:
    for src in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        v = getattr(src, "pad_token_id", None) if src is not None else None
        if isinstance(v, int):
            return v
    return 0


def _filter_sample(
    logits: torch.Tensor,
    u: torch.Tensor,
    temperature: float,
    top_p: float,
    top_k: int,
) -> torch.Tensor:
    """Sample one token per row by inverse CDF over the filtered, tempered distribution.

    ``logits``: (B, V) float32 raw logits; ``u``: (B,) uniforms in [0, 1). Returns (B,) long.
    """
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits / temperature
    vocab = scores.shape[-1]
    # Restrict to the top-k (sorted) or sort for top-p; with neither, sample the full vocabulary as is.
    idx: torch.Tensor | None
    if 0 < top_k < vocab:
        scores, idx = torch.topk(scores, top_k, dim=-1)
    elif top_p < 1.0:
        scores, idx = torch.sort(scores, dim=-1, descending=True)
    else:
        idx = None
    probs = torch.softmax(scores, dim=-1)
    if top_p < 1.0:
        cum = probs.cumsum(dim=-1)
        # keep a token if the mass strictly before it is < top_p (always keeps the first)
        probs = probs.masked_fill((cum - probs) >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    pos = torch.searchsorted(cdf, target, right=True)
    # u*total can round up to the total: fall back to the last token with non-zero probability
    arange = torch.arange(probs.shape[-1], device=probs.device)
    last = torch.where(probs > 0, arange, -1).amax(dim=-1, keepdim=True)
    pos = torch.minimum(pos, last)
    return pos.squeeze(-1) if idx is None else idx.gather(-1, pos).squeeze(-1)


def _normalise_stop(
    stop: Sequence[str] | Sequence[int] | str | int | None,
) -> tuple[list[str], set[int]]:
    if stop is None:
        return [], set()
    if isinstance(stop, (str, int)):
        stop = [stop]  # type: ignore[list-item]
    strs: list[str] = []
    ids: set[int] = set()
    for s in stop:
        if isinstance(s, bool):
            raise TypeError("stop entries must be str or int")
        if isinstance(s, int):
            ids.add(int(s))
        elif isinstance(s, str):
            if s:
                strs.append(s)
        else:
            raise TypeError(f"stop entries must be str or int, got {type(s).__name__}")
    return strs, ids


def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    prompts: list[str] | None = None,
    prompt_tokens: list[list[int]] | None = None,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: list[str] | list[int] | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    *,
    max_batch_size: int = 32,
) -> list[Completion]:
    """Sample ``num_samples`` continuations of each prompt; see the module docstring for semantics.

    Give exactly one of ``prompts`` (text, tokenized with ``tokenizer``, which adds BOS) or
    ``prompt_tokens`` (token ids used as given). ``tokenizer`` may be ``None`` only with
    ``prompt_tokens``, in which case ``text`` is ``""`` and stop strings are unsupported.
    ``top_k <= 0`` (Tinker uses -1) and ``top_p == 1`` disable those filters.
    Rows are batched (left padding, KV cache) up to ``max_batch_size`` at a time. Generation
    also ends with ``"length"`` when the model's context (``max_position_embeddings``) is full.
    Returns ``len(prompts) * num_samples`` completions, prompt-major.
    """

    if (prompts is None) == (prompt_tokens is None):
        raise ValueError("give exactly one of prompts or prompt_tokens")
    if max_tokens < 0:
        raise ValueError("max_tokens must be >= 0")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError("temperature must be a finite number >= 0")
    if not 0.0 < top_p <= 1.0:
        raise ValueError("top_p must be in (0, 1]")
    if num_samples < 1:
        raise ValueError("num_samples must be >= 1")
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    stop_strs, stop_ids = _normalise_stop(stop)
    if stop_strs and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")

    if prompts is not None:
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer")
        encoded = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    else:
        encoded = [[int(t) for t in p] for p in prompt_tokens]  # type: ignore[union-attr]
    for i, p in enumerate(encoded):
        if not p:
            raise ValueError(f"prompt {i} is empty (no tokens)")

    core = _unwrap(model)
    vocab = core.get_output_embeddings().weight.shape[0] if core.get_output_embeddings() is not None else None
    for i, p in enumerate(encoded):
        if vocab is not None and (min(p) < 0 or max(p) >= vocab):
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")
    limit = _max_positions(core)
    for i, p in enumerate(encoded):
        if limit is not None and len(p) >= limit:
            raise ValueError(f"prompt {i} has {len(p)} tokens; the model's context is {limit}")

    base_seed = secrets.randbits(63) if seed is None else int(seed)
    rows = [(pi, si) for pi in range(len(encoded)) for si in range(num_samples)]
    out: list[Completion] = []
    for start in range(0, len(rows), max_batch_size):
        chunk = list(range(start, min(len(rows), start + max_batch_size)))
        out.extend(
            _generate_batch(
                core,
                tokenizer,
                [encoded[rows[r][0]] for r in chunk],
                [rows[r] for r in chunk],
                [row_seed(base_seed, r) for r in chunk],
                max_tokens=max_tokens,
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=max(0, int(top_k)),
                stop_strs=stop_strs,
                stop_ids=stop_ids,
                limit=limit,
            )
        )
    return out


def _generate_batch(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    prompts: list[list[int]],
    row_ids: list[tuple[int, int]],
    seeds: list[int],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    stop_strs: list[str],
    stop_ids: set[int],
    limit: int | None,
) -> list[Completion]:
    import torch

    device = _model_device(model)
    B = len(prompts)
    pad = _pad_id(model, tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    lens = [len(p) for p in prompts]
    T = max(lens)
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[b, T - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp_(min=0)

    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    tokens: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    finish: list[str | None] = [None] * B
    matched: list[str | int | None] = [None] * B
    cut: list[int | None] = [None] * B  # text cut position for stop strings
    texts: list[str] = [""] * B
    # per-row budget: max_tokens, and never past the model's context
    budgets = [max_tokens if limit is None else max(0, min(max_tokens, limit - n)) for n in lens]
    for b in range(B):
        if budgets[b] == 0:
            finish[b] = "length"

    extra = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = None
            step_ids, step_pos = ids, position_ids
            step = 0
            while any(f is None for f in finish):
                outputs = model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=step_pos,
                    past_key_values=cache,
                    use_cache=True,
                    **extra,
                )
                cache = outputs.past_key_values
                logits = outputs.logits[:, -1, :].float()
                logprobs_all = torch.log_softmax(logits, dim=-1)
                if temperature > 0:
                    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(device)
                else:
                    u = torch.zeros(B, device=device)
                nxt = _filter_sample(logits, u, temperature, top_p, top_k)
                nxt_lp = logprobs_all.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
                nxt_l, lp_l = nxt.tolist(), nxt_lp.tolist()
                step += 1
                for b in range(B):
                    if finish[b] is not None:
                        continue
                    t = nxt_l[b]
                    tokens[b].append(t)
                    logps[b].append(float(lp_l[b]))
                    if t in eos_ids:
                        finish[b] = "eos"
                    elif t in stop_ids:
                        finish[b], matched[b] = "stop", t
                    elif stop_strs:
                        text = tokenizer.decode(tokens[b], skip_special_tokens=True)  # type: ignore[union-attr]
                        hits = [(text.find(s), s) for s in stop_strs if s in text]
                        if hits:
                            pos, s = min(hits)
                            finish[b], matched[b], cut[b] = "stop", s, pos
                            texts[b] = text[:pos]
                    if finish[b] is None and len(tokens[b]) >= budgets[b]:
                        finish[b] = "length"
                if all(f is not None for f in finish):
                    break
                # Finished rows keep decoding a pad token (their outputs are ignored).
                feed = [t if finish[b] is None else pad for b, t in enumerate(nxt_l)]
                step_ids = torch.tensor(feed, dtype=torch.long, device=device).unsqueeze(-1)
                step_pos = step_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=-1)
    finally:
        if was_training:
            model.train()

    results: list[Completion] = []
    for b in range(B):
        if cut[b] is None:
            if tokenizer is not None:
                text = tokenizer.decode(tokens[b], skip_special_tokens=True)
            else:
                text = ""
        else:
            text = texts[b]
        results.append(
            Completion(
                text=text,
                tokens=tokens[b],
                logprobs=logps[b],
                finish_reason=finish[b],  # type: ignore[arg-type]
                prompt_tokens=lens[b],
                completion_tokens=len(tokens[b]),
                prompt_index=row_ids[b][0],
                sample_index=row_ids[b][1],
                stop=matched[b],
            )
        )
    return results


def prompt_logprobs(
    model: torch.nn.Module,
    tokens: Sequence[int],
) -> list[float]:
    """Log-probability of each token given the ones before it (Tinker ``compute_logprobs``).

    Returns ``len(tokens)`` floats; the first is ``nan`` (no context). Uses raw logits in fp32.
    """
    import torch

    toks = [int(t) for t in tokens]
    if not toks:
        return []
    core = _unwrap(model)
    limit = _max_positions(core)
    if limit is not None and len(toks) > limit:
        raise ValueError(f"{len(toks)} tokens exceed the model's context of {limit}")
    device = _model_device(core)
    was_training = core.training
    core.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor([toks], dtype=torch.long, device=device)
            logits = core(input_ids=ids, use_cache=False).logits[0, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    finally:
        if was_training:
            core.train()
    return [math.nan] + [float(x) for x in lp.tolist()]
