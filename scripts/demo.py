"""`make demo`: an end-to-end differentially private fine-tune through the whole system.

Starts the embedded node (`tensafe up`), then, through the SDK only:
registers the shipped synthetic clinic notes as an encrypted server-side dataset,
creates a DP training client that draws Poisson batches from it (so ε is exact),
trains with a progress bar, samples, saves an encrypted checkpoint, plots loss and ε,
runs `tensafe audit verify`, and stops the node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "synthetic_clinic_notes.jsonl"


def start_node(data_dir: Path) -> tuple[subprocess.Popen, dict]:
    node_file = data_dir / "node.json"
    node_file.unlink(missing_ok=True)
    log = open(data_dir / "node.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensafe.cli", "up", "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"node exited early; see {data_dir / 'node.log'}:\n"
                + (data_dir / "node.log").read_text()[-3000:]
            )
        if node_file.exists() and "TenSafe node up" in (data_dir / "node.log").read_text():
            return proc, json.loads(node_file.read_text())
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("node did not start within 180 s")


def stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def plot(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(steps, [h["loss"] for h in history], color="tab:blue", label="loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (per token)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(steps, [h["epsilon"] for h in history], color="tab:red", label="ε")
    ax2.set_ylabel("ε spent (RDP, δ=1e-5)", color="tab:red")
    ax1.set_title("TenSafe DP fine-tune: loss and privacy spent")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> int:
    from tensafe import DPConfig, LoRAConfig, ServiceClient, TrainingConfig
    from tqdm import tqdm

    steps = int(os.environ.get("DEMO_STEPS", "30"))
    data_dir = Path(os.environ.get("DEMO_DATA_DIR", ROOT / ".tensafe-demo"))
    if os.environ.get("DEMO_KEEP") != "1" and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting the embedded node in {data_dir} ...", flush=True)
    proc, node = start_node(data_dir)
    try:
        api_key = Path(node["api_key_file"]).read_text().strip()
        service = ServiceClient(base_url=node["gateway_url"], api_key=api_key)
        texts = [json.loads(line)["text"] for line in DATA.read_text().splitlines()]
        dataset = service.register_dataset("synthetic-clinic-notes", texts)
        print(f"registered dataset {dataset.dataset_id}: {len(texts)} synthetic notes, stored encrypted")

        config = TrainingConfig(
            model_ref="tensafe-tiny-llama",
            lora_config=LoRAConfig(rank=8, alpha=16),
            dp_config=DPConfig(
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                target_epsilon=8.0,
                target_delta=1e-5,
                sampling="poisson",
                expected_batch_size=16,
            ),
            dataset_id=dataset.dataset_id,
            batch_size=16,
        )
        tc = service.create_training_client(config)
        print(f"training client {tc.client_id}: DP-SGD with Poisson sampling q = 16/{len(texts)}")
        history = []
        for _ in tqdm(range(steps), desc="DP training", unit="step"):
            r = tc.train_step({"learning_rate": 3e-3}).result()
            history.append({"step": r.step, "loss": r.loss or 0.0, "epsilon": r.epsilon_spent or 0.0})
        metrics = tc.get_dp_metrics()
        sample = tc.sample(prompts=["Patient"], max_tokens=40, temperature=0.7, seed=1)
        saved = tc.save_state("demo-final")
        print()
        print(f"final loss            {history[-1]['loss']:.3f}  (first step {history[0]['loss']:.3f})")
        print(
            f"privacy spent         ε = {metrics.epsilon_spent:.3f} of {metrics.target_epsilon}, δ = {metrics.delta}"
        )
        print(f"guarantee             {metrics.guarantee}")
        print(f"sample                Patient{sample.samples[0].completion}")
        print(f"encrypted checkpoint  {saved.artifact_id}  ({saved.encryption.algorithm})")
        out = ROOT / "reports" / "demo" / "loss_epsilon.png"
        plot(history, out)
        print(f"plot                  {out}")

        # The adapter leaves the service only as a signed package, encrypted to a recipient.
        from tensafe.crypto.kem import HybridKemPrivateKey

        recipient = HybridKemPrivateKey.generate()
        pkg = tc.create_package([recipient.public_key().to_bytes()], name="demo-release")
        pkg_path = ROOT / "reports" / "demo" / "adapter.tssp"
        pkg_path.write_bytes(service.download_package(pkg.artifact_id))
        print(
            f"TSSP package          {pkg_path} ({pkg.size} bytes, ε = {pkg.epsilon:.3f}, "
            f"proofs against ledger checkpoint of size {pkg.checkpoint_tree_size})"
        )
        service.close()
        cli = [sys.executable, "-m", "tensafe.cli", "audit"]
        print("\n$ tensafe audit verify", flush=True)
        rc = subprocess.call([*cli, "verify", "--data-dir", str(data_dir)])
        export = data_dir / "ledger-export.avro"
        subprocess.check_call([*cli, "export", "--data-dir", str(data_dir), "--out", str(export)])
        print(f"\n$ tensafe audit verify --file {export}", flush=True)
        rc = rc or subprocess.call([*cli, "verify", "--file", str(export), "--data-dir", str(data_dir)])
        print(f"\n$ tensafe package verify {pkg_path.name} --trusted node_signing.pub", flush=True)
        rc = rc or subprocess.call(
            [
                sys.executable,
                "-m",
                "tensafe.cli",
                "package",
                "verify",
                str(pkg_path),
                "--trusted",
                str(data_dir / "keys" / "node_signing.pub"),
            ]
        )
    finally:
        stop_node(proc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
