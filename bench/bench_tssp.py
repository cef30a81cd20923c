"""TSSP package build and verification cost for a realistic adapter.

LoRA r=8 (q, k, v, o) on the shipped ``tensafe-tiny-llama`` when it is installed, else on
a ~5M-parameter Llama of the same shape built from config. The package carries a signed
ledger checkpoint over 10,000 events and 8 inclusion proofs, and is wrapped to 2
recipients, like a real export.

python -m bench.bench_tssp [--quick]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

N_EVENTS = 10_000
PROVEN = (0, 1, 999, 4_096, 5_000, 8_191, 9_998, 9_999)


def _median_time(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _base_model(work: Path) -> tuple[Any, Path, str]:
    """(model, directory holding its safetensors, ref) — shipped model if present."""
    from tensafe.trainer.models import (
        BENCH_CONFIGS,
        ModelNotFoundError,
        build_model_from_config,
        load_base_model,
        resolve_model_ref,
    )

    try:
        path = resolve_model_ref("tensafe-tiny-llama", allow_paths=False)
        model, _ = load_base_model("tensafe-tiny-llama", device="cpu")
        return model, path, "tensafe-tiny-llama"
    except (ModelNotFoundError, OSError, ValueError):
        model = build_model_from_config(**BENCH_CONFIGS["llama-5m"], seed=0)
        path = work / "llama-5m"
        model.save_pretrained(path, safe_serialization=True)
        return model, path, "llama-5m"


def _evidence(ledger_key: Any) -> tuple[Any, list[Any]]:
    from tensafe.events.checkpoint_format import (
        Checkpoint,
        EventPosition,
        InclusionProofFile,
        SignedCheckpoint,
        ledger_origin,
    )
    from tensafe.events.merkle import MerkleTree, leaf_hash

    tree = MerkleTree()
    hashes = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(N_EVENTS)]
    for h in hashes:
        tree.append(h)
    cp = Checkpoint(ledger_origin("bench", 0), N_EVENTS, tree.root(), hashes[-1], 1_700_000_000_000)
    signed = SignedCheckpoint.sign(cp, ledger_key)
    proofs = [
        InclusionProofFile(EventPosition("tensafe.ledger", 0, i), leaf_hash(hashes[i]), i, N_EVENTS,
                           tuple(tree.inclusion_proof(i, N_EVENTS)), signed)
        for i in PROVEN
    ]  # fmt: skip
    return signed, proofs


def run(quick: bool) -> dict[str, float]:
    import torch
    from tensafe.crypto.kem import HybridKemPrivateKey
    from tensafe.crypto.signing import HybridSigningKey
    from tensafe.trainer.models import attach_lora
    from tensafe.trainer.state import export_peft_adapter
    from tensafe.tssp import Policy, create_package, model_weights_sha256, unpack_package, verify_package

    repeats = 3 if quick else 10
    with tempfile.TemporaryDirectory(prefix="bench-tssp-") as tmp:
        work = Path(tmp)
        base, base_dir, ref = _base_model(work)
        peft = attach_lora(base, rank=8, alpha=16, seed=0)
        with torch.no_grad():  # a "trained" adapter: non-zero B matrices
            g = torch.Generator().manual_seed(0)
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        adapter_dir = export_peft_adapter(peft, work / "adapter")
        adapter_bytes = sum(f.stat().st_size for f in adapter_dir.iterdir())

        signer, ledger = HybridSigningKey.generate(), HybridSigningKey.generate()
        alice, bob = HybridKemPrivateKey.generate(), HybridKemPrivateKey.generate()
        trusted = {k.key_id: k.public_key() for k in (signer, ledger)}
        checkpoint, proofs = _evidence(ledger)
        provenance = {
            "base_model": {"ref": ref, "weights_sha256": model_weights_sha256(base_dir)},
            "tenant_id": "bench-tenant",
            "training_client_id": "tc_bench",
            "ledger": {
                "ledger_id": "bench",
                "partition": 0,
                "checkpoint": checkpoint,
                "inclusion_proofs": proofs,
            },
        }
        cert = {
            "type": "https://tensafe.dev/dp-certificate/v1", "epsilon": 1.77, "delta": 1e-5,
            "noise_multiplier": 1.0, "sample_rate": 0.008, "steps": 1108, "accountant": "rdp",
            "sampling_mode": "poisson", "guarantee": "exact_poisson", "dataset_size": 1000,
            "max_grad_norm": 1.0, "neighboring_relation": "add_or_remove_one", "test_mode": False,
        }  # fmt: skip
        pkg = work / "bench.tssp"
        recipients = [alice.public_key(), bob.public_key()]

        def create() -> None:
            create_package(pkg, adapter_dir, provenance=provenance, dp_certificate=cert, signer=signer,
                           recipients=recipients)  # fmt: skip

        create_s = _median_time(repeats, create)
        verify_s = _median_time(repeats, lambda: verify_package(pkg, trusted))
        policy = Policy.from_dict({"max_epsilon": 8.0, "required_guarantee": "exact_poisson",
                                   "require_inclusion_proofs": True, "require_delta_below_inverse_n": True})  # fmt: skip
        verify_policy_s = _median_time(repeats, lambda: verify_package(pkg, trusted, policy))
        counter = iter(range(10**6))
        unpack_s = _median_time(
            repeats, lambda: unpack_package(pkg, alice, work / f"out{next(counter)}", trusted, policy)
        )
        return {
            "package_create_s": create_s,
            "package_verify_s": verify_s,
            "package_verify_with_policy_s": verify_policy_s,
            "package_unpack_s": unpack_s,
            "package_bytes": float(pkg.stat().st_size),
            "package_adapter_bytes": float(adapter_bytes),
        }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
