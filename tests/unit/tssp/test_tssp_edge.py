"""EdgeLoader: verify + policy + decrypt + base-digest check + PeftModel.from_pretrained + sample."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensafe.tssp import BaseModelMismatch, PackageError, Policy
from tensafe.tssp.edge import EdgeLoader
from tssp_helpers import BASE_REF, Keys, TinyModel


def test_edge_loader_loads_and_samples(
    package_path: Path, keys: Keys, tiny_model: TinyModel, test_policy: Policy
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # device="cpu": the logits below are compared with a CPU fp32 reference, also on GPU hosts.
    loader = EdgeLoader(keys.trusted, test_policy, keys.alice, device="cpu")
    model, tokenizer = loader.load(package_path, tiny_model.base_dir)
    assert loader.verified is not None and loader.verified.policy_decision.allow
    text = loader.sample("In the beginning", max_tokens=12, temperature=1.0, seed=3)
    assert isinstance(text, str) and text
    again = loader.sample("In the beginning", max_tokens=12, temperature=1.0, seed=3)
    assert again == text  # seeded sampling is reproducible
    done = loader.generate(["a", "b"], max_tokens=4, temperature=0.0)
    assert len(done) == 2 and all(c.completion_tokens >= 1 for c in done)

    # Same logits as the original adapter on the same base.
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model.base_dir), local_files_only=True)
    ref = PeftModel.from_pretrained(base, str(tiny_model.adapter_dir)).eval()
    ids = tokenizer("And it came to pass", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_edge_loader_resolves_the_base_by_name(
    package_path: Path,
    keys: Keys,
    tiny_model: TinyModel,
    test_policy: Policy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TENSAFE_MODEL_DIR", str(tiny_model.base_dir.parent))
    loader = EdgeLoader(keys.trusted, test_policy, keys.bob)
    loader.load(package_path)  # the package's own base ref, found in TENSAFE_MODEL_DIR
    loader.load(package_path, BASE_REF)


def test_edge_loader_refuses_another_base_model(
    package_path: Path, keys: Keys, tiny_model: TinyModel, test_policy: Policy, tmp_path: Path
) -> None:
    import shutil

    from tensafe.trainer.models import build_model_from_config

    other = tmp_path / "other-base"
    shutil.copytree(tiny_model.base_dir, other)
    build_model_from_config(
        hidden=64, layers=2, heads=4, vocab=tiny_model.vocab, intermediate=128, seed=4
    ).save_pretrained(other, safe_serialization=True)
    loader = EdgeLoader(keys.trusted, test_policy, keys.alice)
    with pytest.raises(BaseModelMismatch) as ei:
        loader.load(package_path, other)
    assert ei.value.code == "base_model_mismatch"
    (other / "model.safetensors").unlink()
    with pytest.raises(BaseModelMismatch):
        loader.load(package_path, other)  # no safetensors weights: nothing to check, nothing loaded
    assert loader.model is None


def test_edge_loader_default_policy_and_recipient(
    package_path: Path, keys: Keys, tiny_model: TinyModel
) -> None:
    # No policy given: the conservative default applies and refuses this test-mode run.
    with pytest.raises(PackageError) as ei:
        EdgeLoader(keys.trusted, None, keys.alice).load(package_path, tiny_model.base_dir)
    assert ei.value.code == "policy_violation" and ei.value.rules == ("test_mode",)
    with pytest.raises(PackageError) as ei:
        EdgeLoader(keys.trusted, Policy.from_dict({"allow_test_mode": True}), keys.mallory).load(
            package_path, tiny_model.base_dir
        )
    assert ei.value.code == "wrong_recipient"
