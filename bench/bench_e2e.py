"""End-to-end step cost: a DP training step through SDK → gateway → Kafka → trainer →
ledger → future, divided by the same step (same model, batch and DP settings) run
in-process with DPTrainer. The node runs as its own process (`tensafe up --memory`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "tensafe-tiny-llama"
BATCH = {"input_ids": [[(7 * i + j) % 4000 + 10 for j in range(64)] for i in range(8)]}
BATCH["labels"] = BATCH["input_ids"]


def _in_process(steps: int, model_ref: str = MODEL) -> float:
    from tensafe.trainer.dp_trainer import DPConfig, DPTrainer
    from tensafe.trainer.models import attach_lora, load_base_model

    model, _ = load_base_model(model_ref)
    peft = attach_lora(model, 8, 16, seed=1)
    tr = DPTrainer(
        peft,
        DPConfig(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            target_epsilon=None,
            sampling="client_batches",
            dataset_size=10_000,
            expected_batch_size=8,
        ),
    )
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        tr.forward_backward(BATCH)
        tr.optim_step({"learning_rate": 1e-3})
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _through_node(steps: int, model_ref: str = MODEL, env: dict | None = None) -> tuple[float, float]:
    from tensafe import DPConfig, LoRAConfig, ServiceClient, TrainingConfig

    data = Path(tempfile.mkdtemp(prefix="tensafe-bench-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensafe.cli", "up", "--memory", "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.time() + 120
        while not (data / "node.json").exists():
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("node did not start")
            time.sleep(0.2)
        node = json.loads((data / "node.json").read_text())
        time.sleep(1.0)
        svc = ServiceClient(base_url=node["gateway_url"], api_key=(data / "api_key").read_text().strip())
        tc = svc.create_training_client(
            TrainingConfig(
                model_ref=model_ref,
                lora_config=LoRAConfig(rank=8, alpha=16),
                dp_config=DPConfig(
                    noise_multiplier=1.0,
                    max_grad_norm=1.0,
                    target_epsilon=1e6,
                    sampling="client_batches",
                    dataset_size=10_000,
                    expected_batch_size=8,
                ),
                batch_size=8,
            )
        )
        times, accept = [], []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            fb = tc.forward_backward(BATCH)
            accept.append(time.perf_counter() - t0)
            fb.result()
            tc.optim_step({"learning_rate": 1e-3}).result()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        svc.close()
        return statistics.median(times), statistics.median(accept)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


def _model_50m(root: Path) -> str:
    """A ~50M-parameter Llama (random init, shipped tokenizer) saved where the node finds it."""
    from tensafe.trainer.models import BENCH_CONFIGS, build_model_from_config, load_tokenizer

    out = root / "llama-50m"
    build_model_from_config(**BENCH_CONFIGS["llama-50m"]).save_pretrained(out)
    load_tokenizer(MODEL).save_pretrained(out)
    return "llama-50m"


def run(quick: bool) -> dict[str, float]:
    steps = 8 if quick else 30
    local = _in_process(steps)
    remote, accept = _through_node(steps)
    out = {
        "e2e_step_ratio": round(remote / local, 3),
        "e2e_step_ms": round(remote * 1000, 1),
        "inprocess_step_ms": round(local * 1000, 1),
        "e2e_submit_ms": round(accept * 1000, 2),
        "e2e_overhead_ms": round((remote - local) * 1000, 1),
    }
    # The log adds a roughly fixed cost per step (Kafka hops, the crash-safety snapshot);
    # on a larger model it is a small fraction of the step.
    with tempfile.TemporaryDirectory(prefix="tensafe-models-") as models:
        ref = _model_50m(Path(models))
        os.environ["TENSAFE_MODEL_DIR"] = models
        try:
            n = 3 if quick else 10
            local50 = _in_process(n, ref)
            remote50, _ = _through_node(n, ref, {"TENSAFE_MODEL_DIR": models})
        finally:
            os.environ.pop("TENSAFE_MODEL_DIR", None)
    out |= {
        "e2e_step_ratio_50m": round(remote50 / local50, 3),
        "e2e_step_ms_50m": round(remote50 * 1000, 1),
        "inprocess_step_ms_50m": round(local50 * 1000, 1),
    }
    return out


if __name__ == "__main__":
    print(run(quick=True))
