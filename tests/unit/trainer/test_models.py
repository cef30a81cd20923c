"""tensafe.trainer.models: offline resolution/loading of the shipped base model, LoRA, config models."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tensafe.trainer import models  # noqa: E402
from tensafe.trainer.models import (  # noqa: E402
    BENCH_CONFIGS,
    DEFAULT_BASE_MODEL,
    ENV_MODEL_DIR,
    SHIPPED_MODELS_DIR,
    ModelNotFoundError,
    attach_lora,
    build_model_from_config,
    load_base_model,
    load_tokenizer,
    pick_device_and_dtype,
    resolve_model_ref,
)

REPO = Path(__file__).resolve().parents[3]
HELDOUT = REPO / "scripts" / "corpus" / "kjv_heldout.txt.gz"
SHIPPED = SHIPPED_MODELS_DIR / DEFAULT_BASE_MODEL


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model's ops are too small to gain from intra-op threads, and on a shared 2-core
    # machine an oversubscribed thread pool makes them several times slower. Restore afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped():
    return load_base_model(DEFAULT_BASE_MODEL, device="cpu")


@pytest.fixture()
def offline(monkeypatch):
    """No network: any socket connection attempt fails the test."""
    import socket

    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during an offline model load")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HOME", "/nonexistent-tensafe-hf-home")
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


# --- the shipped asset ------------------------------------------------------------------------


def test_shipped_dir_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir() if p.is_file()}
    total = sum(files.values())
    assert total < 25 * 1024 * 1024, f"{total / 1e6:.1f} MB"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert name in files, name
    card = (SHIPPED / "README.md").read_text()
    assert "King James" in card and "public domain" in card


def test_shipped_loads_offline_fp32_no_dropout(offline, shipped):
    model, tok = load_base_model(DEFAULT_BASE_MODEL)  # defaults: CPU here
    assert model.device.type == "cpu"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    assert model.config.attention_dropout == 0.0
    assert model.config.model_type == "llama"
    n = sum(p.numel() for p in model.parameters())
    assert 3_000_000 < n < 10_000_000
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.eos_token_id is not None and tok.bos_token_id is not None


@pytest.mark.parametrize(
    "text",
    [
        "In the beginning God created the heaven and the earth.",
        "TenSafe fine-tunes LoRA adapters with DP-SGD (ε=3.0, δ=1e-5) — naïve café, 東京, 🙂!",
        "  leading spaces\tand tabs\nand newlines\n\n",
        "def f(x):\n    return {'a': [1, 2, 3]}\n",
    ],
)
def test_tokenizer_round_trips(shipped, text):
    _, tok = shipped
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok) == 8192


# --- resolution -------------------------------------------------------------------------------


def _tiny_dir(root: Path, name: str) -> Path:
    model = build_model_from_config(32, 1, 2, vocab=64, intermediate=64, max_positions=64)
    d = root / name
    model.save_pretrained(str(d))
    return d


def test_resolve_shipped_name_and_path():
    p = resolve_model_ref(DEFAULT_BASE_MODEL)
    assert p == SHIPPED.resolve()
    assert resolve_model_ref(str(SHIPPED)) == SHIPPED.resolve()
    assert DEFAULT_BASE_MODEL in models.list_models()


def test_resolve_env_dir(tmp_path, monkeypatch):
    _tiny_dir(tmp_path / "org", "mini")
    _tiny_dir(tmp_path, "flat")
    other = tmp_path / "second"
    other.mkdir()
    monkeypatch.setenv(ENV_MODEL_DIR, f"{tmp_path / 'missing'}:{tmp_path}")
    assert resolve_model_ref("flat") == (tmp_path / "flat").resolve()
    assert resolve_model_ref("org/mini") == (tmp_path / "org" / "mini").resolve()
    names = models.list_models()
    assert {"flat", "org/mini", DEFAULT_BASE_MODEL} <= set(names)
    # shipped dir wins over TENSAFE_MODEL_DIR for the same name
    _tiny_dir(tmp_path, DEFAULT_BASE_MODEL)
    assert resolve_model_ref(DEFAULT_BASE_MODEL) == SHIPPED.resolve()


def test_resolve_unknown_lists_what_was_searched(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MODEL_DIR, str(tmp_path))
    with pytest.raises(ModelNotFoundError) as ei:
        resolve_model_ref("meta-llama/Llama-3.2-1B")
    msg = str(ei.value)
    assert str(SHIPPED_MODELS_DIR / "meta-llama/Llama-3.2-1B") in msg
    assert str(tmp_path / "meta-llama/Llama-3.2-1B") in msg
    assert DEFAULT_BASE_MODEL in msg  # lists what is available
    assert len(ei.value.searched) == 2
    monkeypatch.delenv(ENV_MODEL_DIR)
    with pytest.raises(ModelNotFoundError, match=ENV_MODEL_DIR):
        resolve_model_ref("nope")
    with pytest.raises(ModelNotFoundError):
        resolve_model_ref(str(tmp_path / "does-not-exist"))
    with pytest.raises(ModelNotFoundError):
        resolve_model_ref(str(tmp_path))  # exists but has no config.json


def test_resolve_names_cannot_escape(tmp_path, monkeypatch):
    _tiny_dir(tmp_path, "outside")
    inner = tmp_path / "inner"
    inner.mkdir()
    monkeypatch.setenv(ENV_MODEL_DIR, str(inner))
    with pytest.raises(ModelNotFoundError):
        resolve_model_ref("../outside", allow_paths=False)
    with pytest.raises(ModelNotFoundError):
        resolve_model_ref(str(tmp_path / "outside"), allow_paths=False)
    assert resolve_model_ref(str(tmp_path / "outside")) == (tmp_path / "outside").resolve()
    with pytest.raises(ValueError):
        resolve_model_ref("  ")


def test_pick_device_and_dtype():
    dev, dt = pick_device_and_dtype("cpu")
    assert dev.type == "cpu" and dt == torch.float32
    dev, dt = pick_device_and_dtype(None)
    if torch.cuda.is_available():
        assert dev.type == "cuda" and dt in (torch.bfloat16, torch.float32)
    else:
        assert (dev.type, dt) == ("cpu", torch.float32)
        with pytest.raises(RuntimeError):
            pick_device_and_dtype("cuda")
    with pytest.raises(ValueError):
        pick_device_and_dtype("tpu")


def test_load_zeroes_all_dropout(tmp_path):
    d = _tiny_dir(tmp_path, "dropout")
    cfg = json.loads((d / "config.json").read_text())
    cfg["attention_dropout"] = 0.25
    (d / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes((SHIPPED / f).read_bytes())
    model, _ = load_base_model(str(d), device="cpu")
    assert model.config.attention_dropout == 0.0
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())


# --- LoRA -------------------------------------------------------------------------------------


def _lora_state(peft_model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" in k}


def test_attach_lora_only_lora_trainable():
    base, _ = load_base_model(DEFAULT_BASE_MODEL, device="cpu")
    pm = attach_lora(base, rank=8, alpha=16, seed=1)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
    n_layers = base.config.num_hidden_layers
    assert len(trainable) == n_layers * 4 * 2
    assert pm.peft_config["default"].lora_dropout == 0.0
    # B starts at zero: the adapted model computes the base model's function
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        a = pm(input_ids=ids).logits
        with pm.disable_adapter():
            b = pm(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_attach_lora_with_mlp_and_explicit_targets():
    m1 = build_model_from_config(64, 2, 4, vocab=128, seed=0)
    pm = attach_lora(m1, rank=4, alpha=8, include_mlp=True, seed=0)
    mods = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in pm.named_parameters() if p.requires_grad}
    assert mods == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    m2 = build_model_from_config(64, 2, 4, vocab=128, seed=0)
    pm2 = attach_lora(m2, rank=4, alpha=8, target_modules=["v_proj"], seed=0)
    mods2 = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in pm2.named_parameters() if p.requires_grad}
    assert mods2 == {"v_proj"}


def test_attach_lora_is_seed_deterministic_and_leaves_global_rng():
    rng_before = torch.get_rng_state()
    s1 = _lora_state(attach_lora(build_model_from_config(64, 2, 4, vocab=128, seed=3), 8, 16, seed=7))
    s2 = _lora_state(attach_lora(build_model_from_config(64, 2, 4, vocab=128, seed=3), 8, 16, seed=7))
    s3 = _lora_state(attach_lora(build_model_from_config(64, 2, 4, vocab=128, seed=3), 8, 16, seed=8))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert s1.keys() == s2.keys() == s3.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    a_keys = [k for k in s1 if "lora_A" in k]
    assert any(not torch.equal(s1[k], s3[k]) for k in a_keys)
    assert all(torch.count_nonzero(s1[k]) == 0 for k in s1 if "lora_B" in k)
    # different modules get different A matrices
    assert not torch.equal(s1[a_keys[0]], s1[a_keys[1]])


# --- config-built models ----------------------------------------------------------------------


def test_build_model_from_config_seeded_and_tokenizer_compatible():
    rng_before = torch.get_rng_state()
    a = build_model_from_config(64, 2, 4, seed=5)
    b = build_model_from_config(64, 2, 4, seed=5)
    c = build_model_from_config(64, 2, 4, seed=6)
    assert torch.equal(torch.get_rng_state(), rng_before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    tok = load_tokenizer(DEFAULT_BASE_MODEL)
    assert a.config.vocab_size == len(tok)
    assert (a.config.pad_token_id, a.config.bos_token_id, a.config.eos_token_id) == (
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
    )
    ids = tok("And it came to pass", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert a(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_bench_50m_config_size():
    cfg = BENCH_CONFIGS["llama-50m"]
    h, L, i, v = cfg["hidden"], cfg["layers"], cfg["intermediate"], 8192
    expected = L * (4 * h * h + 3 * h * i + 2 * h) + v * h + h
    assert 45e6 < expected < 55e6
    # Building it is cheap enough to check the formula against the real module once.
    with torch.device("meta"):
        from transformers import LlamaConfig, LlamaForCausalLM

        m = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=v,
                hidden_size=h,
                intermediate_size=i,
                num_hidden_layers=L,
                num_attention_heads=cfg["heads"],
                num_key_value_heads=cfg["heads"],
                tie_word_embeddings=True,
            )
        )
    assert sum(p.numel() for p in m.parameters()) == expected


# --- the pre-training is real -----------------------------------------------------------------


def _mean_nll(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
        return float(
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        )


def test_shipped_perplexity_far_below_random_init(shipped):
    model, tok = shipped
    text = gzip.decompress(HELDOUT.read_bytes()).decode("utf-8")
    chapters = [c for c in text.split("\n\n") if c.strip()]
    assert len(chapters) == 23
    ids = []
    for c in chapters[:6]:
        ids.extend(tok(c)["input_ids"])
    n = (len(ids) // 256) * 256
    batch = torch.tensor(ids[: min(n, 256 * 8)]).reshape(-1, 256)
    trained = _mean_nll(model, batch)
    cfg = model.config
    rand = build_model_from_config(
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        vocab=cfg.vocab_size,
        intermediate=cfg.intermediate_size,
        seed=0,
    )
    random_init = _mean_nll(rand, batch)
    assert random_init > math.log(cfg.vocab_size) - 0.5  # ~9.0: uniform-ish
    assert trained < 4.5, trained  # perplexity < 90 on held-out KJV chapters
    assert math.exp(random_init - trained) > 50  # perplexity ratio
