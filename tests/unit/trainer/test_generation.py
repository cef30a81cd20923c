"""tensafe.trainer.generation on the shipped tiny model: KV-cache sampling and logprobs."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tensafe.trainer.generation import Completion, generate, prompt_logprobs  # noqa: E402
from tensafe.trainer.models import (  # noqa: E402
    DEFAULT_BASE_MODEL,
    attach_lora,
    build_model_from_config,
    load_base_model,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model's ops are too small to gain from intra-op threads, and on a shared 2-core
    # machine an oversubscribed thread pool makes them several times slower. Restore afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROMPTS = ["And the LORD said unto Moses,", "In the beginning", "Blessed are the"]


@pytest.fixture(scope="module")
def mt():
    return load_base_model(DEFAULT_BASE_MODEL, device="cpu")


def _full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_greedy_deterministic_and_matches_hf_generate(mt):
    model, tok = mt
    a = generate(model, tok, PROMPTS[:1], max_tokens=24, temperature=0.0)
    b = generate(model, tok, PROMPTS[:1], max_tokens=24, temperature=0.0, seed=123)
    assert a[0].tokens == b[0].tokens and a[0].text == b[0].text
    enc = tok(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(
            **enc, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id
        )
    ref_new = ref[0, enc["input_ids"].shape[1] :].tolist()
    assert a[0].tokens == ref_new[: len(a[0].tokens)]
    assert a[0].text.strip(), "greedy output is empty"


def test_batched_left_padding_equals_one_at_a_time(mt):
    model, tok = mt
    together = generate(model, tok, PROMPTS, max_tokens=16, temperature=0.0)
    alone = [generate(model, tok, [p], max_tokens=16, temperature=0.0)[0] for p in PROMPTS]
    assert [c.tokens for c in together] == [c.tokens for c in alone]
    for c, p in zip(together, PROMPTS, strict=True):
        assert c.prompt_tokens == len(tok(p)["input_ids"])
        for x, y in zip(c.logprobs, alone[PROMPTS.index(p)].logprobs, strict=True):
            assert abs(x - y) < 1e-4


def test_seeded_sampling_reproducible_and_seeds_differ(mt):
    model, tok = mt
    rng = torch.get_rng_state()
    kw = dict(max_tokens=20, temperature=1.0, top_p=0.95, num_samples=2)
    a = generate(model, tok, PROMPTS[:2], seed=11, **kw)
    b = generate(model, tok, PROMPTS[:2], seed=11, **kw)
    c = generate(model, tok, PROMPTS[:2], seed=12, **kw)
    assert torch.equal(torch.get_rng_state(), rng), "global RNG must not be used"
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]
    assert a[0].tokens != a[1].tokens, "samples of one prompt should differ"
    assert [(x.prompt_index, x.sample_index) for x in a] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # unseeded calls are not all identical
    u = generate(model, tok, PROMPTS[:1], max_tokens=20, num_samples=3)
    assert len({tuple(x.tokens) for x in u}) > 1


def test_seed_independent_of_batch_split(mt):
    model, tok = mt
    kw = dict(max_tokens=12, temperature=1.0, seed=5, num_samples=4)
    whole = generate(model, tok, PROMPTS[:1], **kw)
    split = generate(model, tok, PROMPTS[:1], max_batch_size=1, **kw)
    assert [x.tokens for x in whole] == [x.tokens for x in split]


def test_logprobs_are_raw_log_softmax(mt):
    model, tok = mt
    outs = generate(
        model, tok, PROMPTS[:2], max_tokens=16, temperature=0.7, top_p=0.9, top_k=40, seed=3, num_samples=2
    )
    for c in outs:
        prompt = tok(PROMPTS[c.prompt_index])["input_ids"]
        logits = _full_logits(model, prompt + c.tokens)
        ref = torch.log_softmax(logits, dim=-1)
        for k, (t, lp) in enumerate(zip(c.tokens, c.logprobs, strict=True)):
            expected = float(ref[len(prompt) - 1 + k, t])
            assert abs(lp - expected) < 1e-4, (k, lp, expected)
        # ... and not the post-temperature distribution
        post = torch.log_softmax(logits / 0.7, dim=-1)
        assert any(
            abs(lp - float(post[len(prompt) - 1 + k, t])) > 1e-3
            for k, (t, lp) in enumerate(zip(c.tokens, c.logprobs, strict=True))
        )
        # prompt_logprobs of the whole sequence agrees with the sampled logprobs
        pl = prompt_logprobs(model, prompt + c.tokens)
        assert math.isnan(pl[0]) and len(pl) == len(prompt) + len(c.tokens)
        for a, b in zip(pl[len(prompt) :], c.logprobs, strict=True):
            assert abs(a - b) < 1e-4


def test_prompt_logprobs_matches_forward(mt):
    model, tok = mt
    ids = tok("For God so loved the world, that he gave his only begotten Son")["input_ids"]
    pl = prompt_logprobs(model, ids)
    ref = torch.log_softmax(_full_logits(model, ids), dim=-1)
    assert math.isnan(pl[0])
    for i in range(1, len(ids)):
        assert abs(pl[i] - float(ref[i - 1, ids[i]])) < 1e-5
    assert prompt_logprobs(model, []) == []
    assert len(prompt_logprobs(model, ids[:1])) == 1


def test_max_tokens_and_length_finish(mt):
    model, tok = mt
    for n in (1, 5, 17):
        (c,) = generate(model, tok, PROMPTS[:1], max_tokens=n, temperature=0.0)
        assert c.completion_tokens == len(c.tokens) == len(c.logprobs) <= n
        if c.finish_reason == "length":
            assert c.completion_tokens == n
    (z,) = generate(model, tok, PROMPTS[:1], max_tokens=0)
    assert z.tokens == [] and z.finish_reason == "length"
    # the model's context bounds generation too
    limit = model.config.max_position_embeddings
    long_prompt = [1] + [tok.convert_tokens_to_ids("Ġthe")] * (limit - 4)
    (c,) = generate(model, tok, prompt_tokens=[long_prompt], max_tokens=50, temperature=0.0)
    assert c.completion_tokens <= 3 and c.finish_reason in ("length", "eos")
    with pytest.raises(ValueError):
        generate(model, tok, prompt_tokens=[[1] * limit], max_tokens=1)


def test_stop_strings(mt):
    model, tok = mt
    (free,) = generate(model, tok, PROMPTS[:1], max_tokens=40, temperature=0.0)
    words = free.text.split()
    assert len(words) >= 4
    stop_word = words[3]
    (c,) = generate(model, tok, PROMPTS[:1], max_tokens=40, temperature=0.0, stop=[stop_word, "zzzqqq"])
    assert c.finish_reason == "stop" and c.stop == stop_word
    cut = free.text.find(stop_word)
    assert c.text == free.text[:cut]
    assert stop_word not in c.text
    assert c.tokens == free.tokens[: len(c.tokens)] and len(c.tokens) < len(free.tokens)
    full = tok.decode(c.tokens, skip_special_tokens=True)
    assert stop_word in full and stop_word not in tok.decode(c.tokens[:-1], skip_special_tokens=True)


def test_stop_token_ids(mt):
    model, tok = mt
    (free,) = generate(model, tok, PROMPTS[:1], max_tokens=30, temperature=0.0)
    stop_id = free.tokens[5]
    first = free.tokens.index(stop_id)
    (c,) = generate(model, tok, PROMPTS[:1], max_tokens=30, temperature=0.0, stop=[stop_id])
    assert c.finish_reason == "stop" and c.stop == stop_id
    assert c.tokens == free.tokens[: first + 1]  # the stop token is included in tokens/logprobs
    assert len(c.logprobs) == len(c.tokens)


def test_eos_finish_and_no_tokenizer():
    model = build_model_from_config(64, 2, 4, vocab=256, seed=0)
    (free,) = generate(model, None, prompt_tokens=[[1, 10, 20]], max_tokens=10, temperature=0.0)
    assert free.text == "" and free.completion_tokens == 10
    model.generation_config.eos_token_id = free.tokens[3]
    (c,) = generate(model, None, prompt_tokens=[[1, 10, 20]], max_tokens=10, temperature=0.0)
    assert c.finish_reason == "eos"
    assert c.tokens == free.tokens[: free.tokens.index(free.tokens[3]) + 1]


def test_top_k_1_is_greedy_and_temperature_zero_samples_agree(mt):
    model, tok = mt
    (g,) = generate(model, tok, PROMPTS[1:2], max_tokens=12, temperature=0.0)
    (k1,) = generate(model, tok, PROMPTS[1:2], max_tokens=12, temperature=1.3, top_k=1, seed=9)
    assert g.tokens == k1.tokens
    many = generate(model, tok, PROMPTS[1:2], max_tokens=12, temperature=0.0, num_samples=3)
    assert len(many) == 3 and all(m.tokens == g.tokens for m in many)
    (tp,) = generate(model, tok, PROMPTS[1:2], max_tokens=12, temperature=1.0, top_p=1e-6, seed=4)
    assert tp.tokens == g.tokens


def test_peft_model_and_training_flag_preserved(mt):
    model, tok = mt
    base_out = generate(model, tok, PROMPTS[:1], max_tokens=10, temperature=0.0)[0]
    fresh, _ = load_base_model(DEFAULT_BASE_MODEL, device="cpu")
    pm = attach_lora(fresh, rank=4, alpha=8, seed=0)
    pm.train()
    (c,) = generate(pm, tok, PROMPTS[:1], max_tokens=10, temperature=0.0)
    assert pm.training
    assert c.tokens == base_out.tokens  # B=0 at init: same function as the base


def test_argument_validation(mt):
    model, tok = mt
    with pytest.raises(ValueError):
        generate(model, tok)
    with pytest.raises(ValueError):
        generate(model, tok, prompts=["a"], prompt_tokens=[[1]])
    with pytest.raises(ValueError):
        generate(model, tok, prompt_tokens=[[]])
    with pytest.raises(ValueError):
        generate(model, tok, prompts=["a"], top_p=0.0)
    with pytest.raises(ValueError):
        generate(model, tok, prompts=["a"], temperature=-1)
    with pytest.raises(ValueError):
        generate(model, tok, prompt_tokens=[[1, 10**6]])
    with pytest.raises(TypeError):
        generate(model, tok, prompts=["a"], stop=[1.5])  # type: ignore[list-item]


def test_readable_sample(mt):
    model, tok = mt
    outs = generate(model, tok, PROMPTS, max_tokens=40, temperature=0.8, top_p=0.95, seed=0)
    assert all(isinstance(c, Completion) for c in outs)
    text = " ".join(c.text for c in outs)
    words = [w.strip(".,;:!?'\"()").lower() for w in text.split()]
    common = {
        "the",
        "and",
        "of",
        "unto",
        "he",
        "that",
        "to",
        "in",
        "shall",
        "lord",
        "his",
        "i",
        "a",
        "for",
        "them",
    }
    assert sum(w in common for w in words) / max(1, len(words)) > 0.2, text
    assert len(set(words)) >= 30, text  # not a degenerate loop
    assert sum(w.isalpha() for w in words) / max(1, len(words)) > 0.8, text


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (2.0, 4, 0.9)],
)
def test_sampler_matches_filtered_distribution(temperature, top_k, top_p):
    from tensafe.trainer.generation import _filter_sample

    raw = torch.tensor([0.5, 2.0, -1.0, 1.0, 0.0, -40.0])
    n = 20_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # evenly spread "uniforms"
    got = _filter_sample(raw.repeat(n, 1), u, temperature, top_p, top_k)
    freq = torch.bincount(got, minlength=raw.numel()).double() / n
    p = torch.softmax(raw.double() / temperature, dim=-1)
    order = torch.argsort(p, descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    mass = 0.0
    for rank, i in enumerate(order.tolist()):
        if (top_k and rank >= top_k) or mass >= top_p:
            break
        keep[i] = True
        mass += float(p[i])
    expected = torch.where(keep, p, 0.0)
    expected /= expected.sum()
    assert torch.allclose(freq, expected, atol=2e-4), (freq, expected)
