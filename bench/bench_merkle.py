"""Merkle tree throughput: appends, proof generation and proof verification.

python -m bench.bench_merkle [--quick]
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable

from tensafe.events.merkle import MerkleTree
from tensafe.events.proofs import verify_consistency, verify_inclusion

N_LEAVES = 100_000


def _best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Best wall time of ``repeats`` calls: the least-disturbed run is the honest one."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool) -> dict[str, float]:
    n_queries = 2_000 if quick else 20_000
    repeats = 1 if quick else 3
    # Leaves shaped like TenSafe's: 32-byte chain hashes.
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(N_LEAVES)]

    holder: list[MerkleTree] = []

    def build() -> None:
        t = MerkleTree()
        append = t.append
        for leaf in leaves:
            append(leaf)
        holder[:] = [t]

    append_s = _best_of(repeats, build)
    tree = holder[0]
    root = tree.root()

    rng = random.Random(6962)
    incl_q = [rng.randrange(N_LEAVES) for _ in range(n_queries)]
    cons_q = [rng.randrange(1, N_LEAVES) for _ in range(n_queries)]

    incl_s = _best_of(repeats, lambda: [tree.inclusion_proof(i) for i in incl_q])
    cons_s = _best_of(repeats, lambda: [tree.consistency_proof(m) for m in cons_q])
    hist_s = _best_of(repeats, lambda: [tree.root(m) for m in cons_q])

    incl_proofs = [(tree.leaf_hash_at(i), i, tree.inclusion_proof(i)) for i in incl_q]
    cons_proofs = [(m, tree.root(m), tree.consistency_proof(m)) for m in cons_q]

    def check_incl() -> None:
        assert all(verify_inclusion(lh, i, N_LEAVES, p, root) for lh, i, p in incl_proofs)

    def check_cons() -> None:
        assert all(verify_consistency(m, N_LEAVES, p, r, root) for m, r, p in cons_proofs)

    vincl_s = _best_of(repeats, check_incl)
    vcons_s = _best_of(repeats, check_cons)

    us = 1e6 / n_queries
    return {
        "merkle_append_per_s": N_LEAVES / append_s,
        "inclusion_proof_us": incl_s * us,
        "consistency_proof_us": cons_s * us,
        "historical_root_us": hist_s * us,
        "inclusion_verify_us": vincl_s * us,
        "consistency_verify_us": vcons_s * us,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
