"""State bytes (no pickle), exact resume, and PEFT adapter export."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tensafe.trainer.dp_trainer import DPConfig, DPTrainer
from tensafe.trainer.state import MAGIC, export_peft_adapter, pack_state, unpack_state
from transformers import LlamaConfig, LlamaForCausalLM

CFG = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
    vocab_size=256, max_position_embeddings=64, attention_dropout=0.0, hidden_dropout=0.0,
)  # fmt: skip


def base_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**CFG))


def tiny_lora(lora_seed: int = 1):
    base = base_model()
    torch.manual_seed(lora_seed)
    return get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )


def dataset(n: int = 48) -> list[list[int]]:
    g = torch.Generator().manual_seed(42)
    return [torch.randint(0, 256, (3 + i % 7,), generator=g).tolist() for i in range(n)]


def adapter(tr: DPTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in tr.engine.params]


CONFIG = DPConfig(
    noise_multiplier=0.9, max_grad_norm=0.5, target_epsilon=50.0, dataset_size=48, expected_batch_size=6
)
ADAM = {"learning_rate": 5e-3, "weight_decay": 0.01}


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_save_load_into_fresh_model_then_continue_equals_uninterrupted(accountant: str) -> None:
    cfg = DPConfig(**(CONFIG.to_dict() | {"accountant": accountant}))
    data = dataset()
    steps = 2 if accountant == "prv" else 4
    full = DPTrainer(tiny_lora(), cfg, seed=b"resume-seed", test_mode=True)
    for _ in range(steps):
        full.train_step_on_dataset(data, ADAM, microbatch_size=4)
    first = DPTrainer(tiny_lora(), cfg, seed=b"resume-seed", test_mode=True)
    for _ in range(steps // 2):
        first.train_step_on_dataset(data, ADAM, microbatch_size=4)
    blob = first.save_state()
    assert isinstance(blob, bytes) and blob[:8] == MAGIC
    del first  # "killed"
    resumed = DPTrainer(tiny_lora(lora_seed=7), cfg, seed=b"resume-seed", test_mode=True)  # other LoRA init
    resumed.load_state(blob)
    for _ in range(steps - steps // 2):
        resumed.train_step_on_dataset(data, ADAM, microbatch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(adapter(full), adapter(resumed), strict=True))
    assert any(
        float(p.detach().abs().max()) > 0 for n, p in resumed.engine.named_params if "lora_B" in n
    )  # trained
    for p, q in zip(full.engine.params, resumed.engine.params, strict=True):
        sf, sr = full.optimizer.state[p], resumed.optimizer.state[q]
        assert all(torch.equal(sf[k], sr[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert full.dp_metrics() == resumed.dp_metrics()
    assert full.sampler.state_dict() == resumed.sampler.state_dict()
    assert full.noise.state_dict() == resumed.noise.state_dict()


def test_state_blob_layout_and_rejections() -> None:
    tr = DPTrainer(tiny_lora(), CONFIG, seed=b"x", test_mode=True)
    tr.train_step_on_dataset(dataset(), ADAM)
    blob = tr.save_state()
    (n,) = struct.unpack("<Q", blob[8:16])
    header = json.loads(blob[16 : 16 + n])
    assert header["step"] == 1 and header["accountant"]["history"] and header["noise"]["position"] > 0
    assert set(header["noise"]) == {"version", "seeded", "position"}  # positions only, never a key
    assert set(header["sampler"]) == {
        "version",
        "seeded",
        "position",
        "steps",
        "dataset_size",
        "expected_batch_size",
    }
    assert b"pickle" not in blob and b"\x80\x04" not in blob[: 16 + n]
    _, tensors = unpack_state(blob)
    assert any(k.startswith("optim/") for k in tensors) and any(k.startswith("adapter/") for k in tensors)
    with pytest.raises(ValueError):
        unpack_state(b"PK\x03\x04" + blob[4:])  # e.g. a torch.save zip
    with pytest.raises(ValueError):
        unpack_state(blob[:20])
    with pytest.raises(ValueError):
        unpack_state(blob[:-10])
    other = DPTrainer(
        tiny_lora(), DPConfig(**(CONFIG.to_dict() | {"max_grad_norm": 1.0})), seed=b"x", test_mode=True
    )
    with pytest.raises(ValueError):
        other.load_state(blob)
    prod = DPTrainer(tiny_lora(), CONFIG)
    with pytest.raises(ValueError):
        prod.load_state(blob)  # a test-mode state never becomes a production run


def test_production_resume_keeps_accounting_but_draws_fresh_noise() -> None:
    a = DPTrainer(tiny_lora(), CONFIG)
    a.train_step_on_dataset(dataset(), ADAM)
    b = DPTrainer(tiny_lora(lora_seed=3), CONFIG)
    b.load_state(a.save_state())
    assert b.dp_metrics() == a.dp_metrics()
    assert all(torch.equal(x, y) for x, y in zip(adapter(a), adapter(b), strict=True))
    za, zb = a.noise.normal((16,), 1.0), b.noise.normal((16,), 1.0)
    assert not torch.equal(za, zb)


def test_pack_unpack_roundtrip() -> None:
    t = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.tensor(3.0)}
    h, back = unpack_state(pack_state({"x": [1, 2.5, None]}, t))
    assert h == {"x": [1, 2.5, None]} and all(torch.equal(t[k], back[k]) for k in t)
    with pytest.raises(ValueError):
        pack_state({"x": float("nan")}, {})


def test_peft_export_reloads_with_identical_logits(tmp_path) -> None:
    tr = DPTrainer(tiny_lora(), CONFIG, seed=b"exp", test_mode=True)
    for _ in range(3):
        tr.train_step_on_dataset(dataset(), {"learning_rate": 2e-2})
    out = export_peft_adapter(tr.model, tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(base_model(), str(out))
    ids = torch.tensor([dataset()[5] + dataset()[6]])
    tr.model.eval()
    reloaded.eval()
    with torch.no_grad():
        want = tr.model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        plain = base_model()(input_ids=ids).logits
    assert torch.equal(want, got)
    assert not torch.equal(want, plain)  # the adapter is really there
    # The wrapped model (with Opacus hooks) exports too.
    tr.export_adapter(str(tmp_path / "again"))
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (
        out / "adapter_model.safetensors"
    ).read_bytes()
