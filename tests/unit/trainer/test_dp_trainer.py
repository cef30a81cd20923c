"""DPTrainer façade: budget refusal is atomic, certificate honesty, sampling-mode rules."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tensafe.trainer.accountant import PrivacyAccountant
from tensafe.trainer.dp_trainer import AdamParams, BudgetExceeded, DPConfig, DPTrainer, SamplingModeError
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_lora(base_seed: int = 0, lora_seed: int = 1):
    torch.manual_seed(base_seed)
    cfg = LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=128, vocab_size=256, max_position_embeddings=64,
        attention_dropout=0.0, hidden_dropout=0.0,
    )  # fmt: skip
    base = LlamaForCausalLM(cfg)
    torch.manual_seed(lora_seed)
    return get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )


def batch(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        toks = torch.randint(0, 256, (4 + i % 5,), generator=g).tolist()
        out.append({"input_ids": toks, "labels": toks})
    return out


def snapshot(tr: DPTrainer) -> dict:
    return {
        "params": [p.detach().clone() for p in tr.engine.params],
        "optim": {id(p): {k: v.clone() for k, v in st.items()} for p, st in tr.optimizer.state.items()},
        "accountant": tr.accountant.state_dict(),
        "noise_pos": tr.noise.position,
        "accum": tr.engine.clipped_sum(),
        "pending": (tr.engine.pending_samples, tr.engine.pending_microbatches),
        "step": tr.step,
        "metrics": tr.dp_metrics(),
    }


def assert_same(a: dict, b: dict) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"], strict=True))
    assert a["optim"].keys() == b["optim"].keys()
    for k in a["optim"]:
        assert all(torch.equal(a["optim"][k][n], b["optim"][k][n]) for n in a["optim"][k])
    assert all(torch.equal(x, y) for x, y in zip(a["accum"], b["accum"], strict=True))
    for k in ("accountant", "noise_pos", "pending", "step", "metrics"):
        assert a[k] == b[k], k


def test_step_past_budget_raises_and_changes_nothing() -> None:
    sigma, q = 1.0, 4 / 400
    acc = PrivacyAccountant("rdp", 1e-5)
    acc.step(sigma, q, 2)
    e2 = acc.epsilon()
    e3 = acc.would_be_epsilon(sigma, q)
    cfg = DPConfig(
        noise_multiplier=sigma, max_grad_norm=0.5, target_epsilon=(e2 + e3) / 2,
        sampling="client_batches", dataset_size=400, expected_batch_size=4,
    )  # fmt: skip
    tr = DPTrainer(tiny_lora(), cfg, seed=b"budget", test_mode=True)
    for i in range(2):
        tr.forward_backward(batch(4, i))
        out = tr.optim_step(AdamParams(learning_rate=1e-2))
    assert out["epsilon_spent"] == pytest.approx(e2, rel=1e-12)
    tr.forward_backward(batch(4, 9))  # pending clipped sum must survive the refusal
    before = snapshot(tr)
    with pytest.raises(BudgetExceeded) as ei:
        tr.optim_step(AdamParams(learning_rate=1e-2))
    assert ei.value.epsilon_would_be == pytest.approx(e3, rel=1e-12)
    assert ei.value.target_epsilon == cfg.target_epsilon
    assert_same(before, snapshot(tr))
    assert all(p.grad is None for p in tr.engine.params)
    # And the refusal is stable: asking again still refuses, still changes nothing.
    with pytest.raises(BudgetExceeded):
        tr.optim_step()
    assert_same(before, snapshot(tr))


def test_poisson_route_refuses_before_sampling() -> None:
    data = batch(40, 3)
    cfg = DPConfig(noise_multiplier=1.0, target_epsilon=4.0, dataset_size=40, expected_batch_size=8)
    tr = DPTrainer(tiny_lora(), cfg, seed=b"p", test_mode=True)
    with pytest.raises(BudgetExceeded):
        for _ in range(50):
            tr.train_step_on_dataset(data)
    before = snapshot(tr)
    sampler_state = tr.sampler.state_dict()
    with pytest.raises(BudgetExceeded):
        tr.train_step_on_dataset(data)
    assert tr.sampler.state_dict() == sampler_state
    assert_same(before, snapshot(tr))
    assert tr.step >= 2 and 0 < tr.dp_metrics()["epsilon_spent"] <= 4.0


def test_certificate_is_conditional_for_client_batches() -> None:
    tr = DPTrainer(
        tiny_lora(), DPConfig(sampling="client_batches", dataset_size=10_000, expected_batch_size=4)
    )
    tr.forward_backward(batch(4, 0))
    tr.optim_step()
    m = tr.dp_metrics()
    assert m["guarantee"] == "conditional_on_client_sampling"
    assert m["declared_dataset_size"] == 10_000 and "dataset_size" not in m
    assert m["sampling_mode"] == "client_batches" and m["sample_rate"] == 4 / 10_000
    assert m["steps"] == 1 and m["epsilon_spent"] > 0 and m["test_mode"] is False
    assert "os.urandom" in m["noise_source"]
    assert m["epsilon_remaining"] == pytest.approx(8.0 - m["epsilon_spent"])
    for k in ("epsilon_spent", "delta", "noise_multiplier", "accountant", "max_grad_norm"):
        assert k in m


def test_poisson_mode_rejects_client_batches_and_handles_empty_batches() -> None:
    data = batch(200, 5)
    cfg = DPConfig(dataset_size=200, expected_batch_size=0.5, target_epsilon=None)  # q = 0.0025: often empty
    tr = DPTrainer(tiny_lora(), cfg, seed=b"e", test_mode=True)
    with pytest.raises(SamplingModeError):
        tr.forward_backward(batch(2, 0))
    with pytest.raises(SamplingModeError):
        tr.optim_step()
    sizes = []
    for _ in range(8):
        before = [p.detach().clone() for p in tr.engine.params]
        out = tr.train_step_on_dataset(data, {"learning_rate": 1e-2})
        sizes.append(out["batch_size"])
        assert any(
            not torch.equal(a, p) for a, p in zip(before, tr.engine.params, strict=True)
        )  # noise moved it
    assert 0 in sizes
    m = tr.dp_metrics()
    assert m["steps"] == 8 and m["guarantee"] == "poisson_subsampled_gaussian" and m["dataset_size"] == 200
    with pytest.raises(ValueError):
        tr.train_step_on_dataset(data[:-1])


def test_config_rules() -> None:
    with pytest.raises(ValueError):
        DPTrainer(
            tiny_lora(), DPConfig(dataset_size=100, expected_batch_size=4), seed=b"x"
        )  # seed w/o test mode
    with pytest.raises(ValueError):
        DPTrainer(tiny_lora(), DPConfig(dataset_size=None, expected_batch_size=4))
    with pytest.raises(ValueError):
        DPTrainer(tiny_lora(), DPConfig(dataset_size=100, expected_batch_size=4, target_delta=0.05))
    cal = DPTrainer(
        tiny_lora(),
        DPConfig(
            noise_multiplier=None,
            target_epsilon=3.0,
            planned_steps=200,
            dataset_size=1000,
            expected_batch_size=10,
        ),
    )
    assert PrivacyAccountant().would_be_epsilon(cal.noise_multiplier, 0.01, 200) <= 3.0


def test_non_private_trainer_and_grad_clip_norm() -> None:
    tr = DPTrainer(tiny_lora(), DPConfig(enabled=False))
    before = [p.detach().clone() for p in tr.engine.params]
    tr.forward_backward(batch(3, 1))
    out = tr.optim_step(AdamParams(learning_rate=1e-2, grad_clip_norm=0.1))
    assert "epsilon_spent" not in out and out["samples"] == 3
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.engine.params, strict=True))
    assert tr.dp_metrics() == {"enabled": False, "guarantee": "none", "epsilon_spent": None, "steps": 1}
    dp = DPTrainer(tiny_lora(), DPConfig(sampling="client_batches", dataset_size=100, expected_batch_size=2))
    dp.forward_backward(batch(2, 1))
    assert dp.optim_step(AdamParams(grad_clip_norm=1.0))["grad_clip_norm_ignored"] is True
