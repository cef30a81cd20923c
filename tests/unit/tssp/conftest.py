"""Fixtures for TSSP tests: a tiny Llama base dir, a real DP-trained PEFT adapter, keys,
ledger evidence (signed checkpoint + inclusion proofs) and one built package.

Everything is module- or session-scoped: the expensive parts (model build, two DP steps,
hybrid key generation) run once for the whole suite.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tensafe.crypto.kem import HybridKemPrivateKey
from tensafe.crypto.signing import HybridSigningKey
from tensafe.trainer.models import SHIPPED_MODELS_DIR
from tensafe.tssp import Policy, create_package, dp_certificate_from_metrics
from tssp_helpers import BASE_REF, Keys, TinyModel, make_provenance


def _tokenizer_files(dest: Path) -> int:
    """Copy the shipped tokenizer if present, else train a tiny byte-level BPE. Returns vocab size."""
    from transformers import AutoTokenizer

    shipped = SHIPPED_MODELS_DIR / "tensafe-tiny-llama"
    if (shipped / "tokenizer.json").is_file() and (shipped / "tokenizer_config.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(shipped / name, dest / name)
    else:  # the shipped model is being built elsewhere; stay independent of it
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<s>", "</s>"])
        corpus = ["In the beginning the adapter was packaged, signed and sealed."] * 50
        tok.train_from_iterator(corpus, trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
        )
        fast.save_pretrained(dest)
    return len(AutoTokenizer.from_pretrained(str(dest), local_files_only=True))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    import torch
    from tensafe.trainer.dp_trainer import DPConfig, DPTrainer
    from tensafe.trainer.models import attach_lora, build_model_from_config

    root = tmp_path_factory.mktemp("tiny")
    base_dir = root / BASE_REF
    base_dir.mkdir()
    vocab = _tokenizer_files(base_dir)
    base = build_model_from_config(hidden=64, layers=2, heads=4, vocab=vocab, intermediate=128, seed=3)
    base.save_pretrained(base_dir, safe_serialization=True)

    peft = attach_lora(base, rank=4, alpha=8, seed=1)
    cfg = DPConfig(
        noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=None, target_delta=1e-4,
        dataset_size=64, expected_batch_size=4,
    )  # fmt: skip
    trainer = DPTrainer(peft, cfg, seed=b"tssp-test", test_mode=True)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(3, vocab, (6 + i % 5,), generator=g).tolist() for i in range(64)]
    for _ in range(2):
        trainer.train_step_on_dataset(data, {"learning_rate": 5e-2}, microbatch_size=8)
    adapter_dir = root / "adapter"
    trainer.export_adapter(str(adapter_dir))
    return TinyModel(base_dir, adapter_dir, trainer.dp_metrics(), vocab)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        HybridSigningKey.generate(),
        HybridSigningKey.generate(),
        HybridSigningKey.generate(),
        HybridKemPrivateKey.generate(),
        HybridKemPrivateKey.generate(),
        HybridKemPrivateKey.generate(),
    )


@pytest.fixture(scope="session")
def certificate(tiny_model: TinyModel) -> dict[str, Any]:
    return dp_certificate_from_metrics(tiny_model.dp_metrics)


@pytest.fixture(scope="session")
def package_path(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel, keys: Keys, certificate
) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "adapter.tssp"
    create_package(
        out,
        tiny_model.adapter_dir,
        provenance=make_provenance(tiny_model, keys),
        dp_certificate=certificate,
        signer=keys.signer,
        recipients=[keys.alice.public_key(), keys.bob.public_key()],
    )
    return out


@pytest.fixture(scope="session")
def package_bytes(package_path: Path) -> bytes:
    return package_path.read_bytes()


@pytest.fixture(scope="session")
def test_policy() -> Policy:
    """The default policy, but accepting the seeded (test-mode) DP run these tests make."""
    return Policy.from_dict(
        {"max_epsilon": 1e6, "require_delta_below_inverse_n": True, "allow_test_mode": True}
    )


@pytest.fixture
def out_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "out"
