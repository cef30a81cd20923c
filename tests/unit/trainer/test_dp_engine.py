"""Per-sample gradients, clipping and accumulation of the DP engine.

Reference: an exact per-sample autograd loop, each sample run alone and
unpadded. float64 throughout, so the tolerance is 1e-6 absolute with a lot of
room (observed differences are ~1e-16).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tensafe.trainer.dp_engine import DPEngine, clip_factors, per_sample_norms
from tensafe.trainer.losses import collate, per_sample_loss, token_nll
from tensafe.trainer.noise import GaussianNoiseSource
from transformers import LlamaConfig, LlamaForCausalLM

TOL = 1e-6


def tiny_lora(seed: int = 0, dtype: torch.dtype = torch.float64, randomize_lora: bool = True):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=128, vocab_size=256, max_position_embeddings=64,
        attention_dropout=0.0, hidden_dropout=0.0,
    )  # fmt: skip
    model = get_peft_model(
        LlamaForCausalLM(cfg),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    if randomize_lora:  # lora_B starts at 0, which would make lora_A's gradients 0
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 0.05)
    return model.to(dtype)


def ragged_samples(n: int, seed: int, hf: bool) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = 3 + (i * 5 + seed) % 9  # different lengths -> padding
        toks = torch.randint(0, 256, (L,), generator=g).tolist()
        if hf:
            labels = list(toks)
            labels[0] = -100
            if L > 4:
                labels[2] = -100  # an ignored token in the middle
            out.append({"input_ids": toks, "labels": labels})
        else:
            tgt = torch.randint(0, 256, (L,), generator=g).tolist()
            w = torch.rand(L, generator=g).round().tolist()
            w[-1] = 1.0
            out.append({"model_input": toks, "loss_fn_inputs": {"target_tokens": tgt, "weights": w}})
    return out


def reference_grads(model, samples: list[dict], token_reduction: str = "sum") -> list[list[torch.Tensor]]:
    """Exact per-sample gradients: one sample at a time, no padding at all."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for s in samples:
        packed = collate([s])
        out = model(input_ids=packed.input_ids, use_cache=False)
        loss = per_sample_loss(token_nll(out.logits, packed.targets), packed.weights, token_reduction)[0]
        grads.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return grads


@pytest.mark.parametrize("hf", [True, False], ids=["hf_labels", "tinker_targets"])
def test_per_sample_gradients_equal_exact_autograd_loop(hf: bool) -> None:
    model = tiny_lora()
    samples = ragged_samples(5, seed=3, hf=hf)
    packed = collate(samples)
    assert len(set(packed.lengths)) > 1 and (packed.attention_mask == 0).any()  # really padded
    engine = DPEngine(model, max_grad_norm=1.0)
    got = engine.per_sample_gradients(samples)
    ref = reference_grads(tiny_lora(), samples)  # an identical, unhooked copy
    max_diff = 0.0
    for i in range(len(samples)):
        for g_batch, g_ref in zip(got, ref[i], strict=True):
            max_diff = max(max_diff, float((g_batch[i] - g_ref).abs().max()))
    assert max(float(g.abs().max()) for g in got) > 1e-3  # gradients are not trivially zero
    assert max_diff <= TOL, max_diff
    # Nothing leaked into .grad or the accumulator.
    assert all(p.grad is None for p in engine.params)
    assert all(float(a.abs().max()) == 0.0 for a in engine.clipped_sum())


def test_left_padding_gives_the_same_per_sample_gradients() -> None:
    model = tiny_lora()
    samples = ragged_samples(4, seed=5, hf=True)
    right = collate(samples)
    T = right.input_ids.shape[1]
    ids = torch.zeros_like(right.input_ids)
    mask = torch.zeros_like(right.attention_mask)
    labels = torch.full_like(right.input_ids, -100)
    for i, s in enumerate(samples):
        L = len(s["input_ids"])
        ids[i, T - L :] = torch.tensor(s["input_ids"])
        mask[i, T - L :] = 1
        labels[i, T - L :] = torch.tensor(s["labels"])
    engine = DPEngine(model, max_grad_norm=1.0)
    a = engine.per_sample_gradients(samples)
    b = engine.per_sample_gradients({"input_ids": ids, "attention_mask": mask, "labels": labels})
    for x, y in zip(a, b, strict=True):
        assert float((x - y).abs().max()) <= TOL


def test_clipped_per_sample_norms_are_at_most_C() -> None:
    engine = DPEngine(tiny_lora(), max_grad_norm=0.05)
    samples = ragged_samples(6, seed=7, hf=False)
    grads = engine.per_sample_gradients(samples)
    norms = per_sample_norms(grads)
    assert float(norms.max()) > 0.05  # some samples are really clipped
    f = clip_factors(norms, 0.05)
    B = len(samples)
    clipped_sq = sum((g * f.view(B, *[1] * (g.dim() - 1))).reshape(B, -1).pow(2).sum(1) for g in grads)
    assert bool((clipped_sq.sqrt() <= 0.05 + 1e-6).all())
    # Samples under the bound are untouched.
    small = norms < 0.05
    assert bool((f[small] == 1.0).all())
    # The accumulator holds exactly the sum of the clipped gradients.
    rep = engine.forward_backward(samples)
    expected = [torch.einsum("i,i...->...", f, g) for g in grads]
    for acc, e in zip(engine.clipped_sum(), expected, strict=True):
        assert float((acc - e).abs().max()) <= TOL
    assert rep["clip"]["fraction_clipped"] == pytest.approx(float((norms > 0.05).float().mean()))
    assert rep["clip"]["max_norm"] == pytest.approx(float(norms.max()))
    assert rep["clip"]["per_sample_norms"] == pytest.approx(norms.tolist())


def test_several_forward_backward_equal_one_combined_batch() -> None:
    samples = ragged_samples(7, seed=11, hf=True)
    split = DPEngine(tiny_lora(), max_grad_norm=0.5)
    r1 = split.forward_backward(samples[:3])
    r2 = split.forward_backward(samples[3:])
    whole = DPEngine(tiny_lora(), max_grad_norm=0.5)
    rw = whole.forward_backward(samples)
    for a, b in zip(split.clipped_sum(), whole.clipped_sum(), strict=True):
        assert float((a - b).abs().max()) <= TOL
    assert split.pending_samples == whole.pending_samples == 7
    assert r1["loss_sum"] + r2["loss_sum"] == pytest.approx(rw["loss_sum"], rel=1e-9)
    # Same noise (same test seed) -> the same noisy gradient.
    split.write_noisy_mean(GaussianNoiseSource(b"s"), 1.0, 4.0)
    whole.write_noisy_mean(GaussianNoiseSource(b"s"), 1.0, 4.0)
    for p, q in zip(split.params, whole.params, strict=True):
        assert float((p.grad - q.grad).abs().max()) <= TOL


def test_noisy_mean_is_clipped_sum_plus_noise_over_expected_batch() -> None:
    engine = DPEngine(tiny_lora(), max_grad_norm=0.3)
    engine.forward_backward(ragged_samples(3, seed=2, hf=False))
    acc = engine.clipped_sum()
    engine.write_noisy_mean(GaussianNoiseSource(b"k"), 1.7, 8.0)
    total = sum(a.numel() for a in acc)
    z = GaussianNoiseSource(b"k").normal((total,), 1.7 * 0.3, dtype=torch.float64)
    off = 0
    for p, a in zip(engine.params, acc, strict=True):
        n = a.numel()
        want = (a + z[off : off + n].view(a.shape)) / 8.0
        off += n
        assert torch.allclose(p.grad, want, rtol=0, atol=1e-12)
    engine.clear()
    assert engine.pending_samples == 0 and all(p.grad is None for p in engine.params)
    assert all(float(a.abs().max()) == 0.0 for a in engine.clipped_sum())


def test_empty_step_is_noise_only() -> None:
    engine = DPEngine(tiny_lora(), max_grad_norm=1.0)
    engine.write_noisy_mean(GaussianNoiseSource(b"e"), 2.0, 10.0)
    g = torch.cat([p.grad.reshape(-1) for p in engine.params])
    assert float(g.abs().max()) > 0  # noise, nothing else
    assert float(g.std()) == pytest.approx(2.0 * 1.0 / 10.0, rel=0.1)


def test_non_private_path_is_the_mean_gradient() -> None:
    samples = ragged_samples(4, seed=13, hf=True)
    engine = DPEngine(tiny_lora(), max_grad_norm=1.0, private=False)
    rep = engine.forward_backward(samples)
    engine.write_mean()
    ref = reference_grads(tiny_lora(), samples)
    for j, p in enumerate(engine.params):
        want = sum(r[j] for r in ref) / len(samples)
        assert float((p.grad - want).abs().max()) <= TOL
    assert "clip" not in rep


def test_forward_reports_logprobs_and_losses() -> None:
    engine = DPEngine(tiny_lora(), max_grad_norm=1.0)
    samples = ragged_samples(3, seed=1, hf=False)
    rep = engine.forward(samples)
    assert [len(lp) for lp in rep["logprobs"]] == [len(s["model_input"]) for s in samples]
    w_loss = [
        -sum(float(lp[t]) * s["loss_fn_inputs"]["weights"][t] for t in range(len(lp)))
        for lp, s in zip(rep["logprobs"], samples, strict=True)
    ]
    assert rep["per_sample_loss"] == pytest.approx(w_loss, rel=1e-5)
    assert rep["loss_sum"] == pytest.approx(sum(w_loss), rel=1e-5)
    assert rep["loss_mean"] == pytest.approx(rep["loss_sum"] / rep["num_tokens"])
    hf = engine.forward(ragged_samples(2, seed=1, hf=True))
    assert torch.isnan(hf["logprobs"][0][-1])  # no target after the last token


def test_a_model_cannot_carry_two_engines() -> None:
    model = tiny_lora()
    DPEngine(model, max_grad_norm=1.0)
    with pytest.raises(ValueError):
        DPEngine(model, max_grad_norm=1.0)
    with pytest.raises(ValueError):
        DPEngine(model, max_grad_norm=1.0, private=False)


def test_rows_with_their_own_padding_and_logprobs_of_real_tokens() -> None:
    engine = DPEngine(tiny_lora(), max_grad_norm=1.0)
    samples = ragged_samples(3, seed=4, hf=True)
    L = max(len(s["input_ids"]) for s in samples)
    left = []
    for s in samples:  # left-padded rows, each with its own mask
        pad = L - len(s["input_ids"])
        left.append(
            {
                "input_ids": [0] * pad + s["input_ids"],
                "attention_mask": [0] * pad + [1] * len(s["input_ids"]),
                "labels": [-100] * pad + s["labels"],
            }
        )
    a, b = engine.forward(samples), engine.forward(left)
    assert a["per_sample_loss"] == pytest.approx(b["per_sample_loss"], rel=1e-9)
    for x, y in zip(a["logprobs"], b["logprobs"], strict=True):
        assert len(x) == len(y) and torch.allclose(x, y, equal_nan=True, atol=1e-6)
    ga, gb = engine.per_sample_gradients(samples), engine.per_sample_gradients(left)
    assert all(float((x - y).abs().max()) <= TOL for x, y in zip(ga, gb, strict=True))
