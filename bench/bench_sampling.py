"""Sampling throughput: the shipped tiny model at batch 1 and 8, and a ~50M-param Llama at batch 1.

Metrics (generated tokens per second, best of a few runs, KV cache, temperature 1, top-p 0.95):
* ``sample_tokens_per_s``      shipped ``tensafe-tiny-llama``, one sequence;
* ``sample_tokens_per_s_b8``   the same, 8 sequences at once (aggregate over the batch);
* ``sample_tokens_per_s_50m``  ``BENCH_CONFIGS["llama-50m"]`` (random init, fp32), one sequence.

Threads: the tiny model runs with 1 intra-op thread (its matmuls are too small to split, and on a
shared 2-core machine an oversubscribed pool is several times slower: 24 vs 170 tokens/s measured
under load). The 50M model is measured with 1 and with ``min(2, torch.get_num_threads())`` threads
(``_t1``/``_t2``); ``sample_tokens_per_s_50m`` is the better of the two. The caller's thread
setting is restored afterwards.
"""

from __future__ import annotations

import time


def _best_rate(fn, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def run(quick: bool) -> dict[str, float]:
    import torch

    threads_before = torch.get_num_threads()
    big_threads = min(2, threads_before)
    try:
        torch.set_num_threads(1)
        return _run(quick, big_threads)
    finally:
        torch.set_num_threads(threads_before)


def _run(quick: bool, big_threads: int) -> dict[str, float]:
    import torch
    from tensafe.trainer.generation import generate
    from tensafe.trainer.models import (
        BENCH_CONFIGS,
        DEFAULT_BASE_MODEL,
        build_model_from_config,
        load_base_model,
    )

    model, tok = load_base_model(DEFAULT_BASE_MODEL, device="cpu")
    prompt = ["And the LORD spake unto Moses, saying,"]
    max_tokens = 64 if quick else 128
    repeats = 2 if quick else 3

    def tiny(batch: int) -> int:
        outs = generate(
            model, tok, prompt, max_tokens=max_tokens, temperature=1.0, top_p=0.95, seed=0, num_samples=batch
        )
        return sum(c.completion_tokens for c in outs)

    tiny(1)  # warm-up
    b1 = _best_rate(lambda: tiny(1), repeats)
    b8 = _best_rate(lambda: tiny(8), repeats)

    big = build_model_from_config(**BENCH_CONFIGS["llama-50m"], seed=0)
    big_params = sum(p.numel() for p in big.parameters())
    big_prompt = [tok(prompt[0])["input_ids"]]
    big_tokens = 32 if quick else 64

    def fifty() -> int:
        (c,) = generate(
            big, None, prompt_tokens=big_prompt, max_tokens=big_tokens, temperature=1.0, top_p=0.95, seed=0
        )
        return c.completion_tokens

    fifty()  # warm-up
    m50_t1 = _best_rate(fifty, repeats)
    m50_t2 = 0.0
    if big_threads > 1:
        torch.set_num_threads(big_threads)
        fifty()
        m50_t2 = _best_rate(fifty, repeats)
    m50 = max(m50_t1, m50_t2)
    return {
        "sample_tokens_per_s": round(b1, 1),
        "sample_tokens_per_s_b8": round(b8, 1),
        "sample_tokens_per_s_50m": round(m50, 1),
        "sample_tokens_per_s_50m_t1": round(m50_t1, 1),
        "sample_tokens_per_s_50m_t2": round(m50_t2, 1),
        "sample_50m_params_m": round(big_params / 1e6, 2),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
