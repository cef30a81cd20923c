"""Crypto throughput and latency: streaming AES-256-GCM vs memcpy, hybrid signatures, hybrid KEM.

python -m bench.bench_crypto [--quick]

``encrypt_vs_memcpy_ratio`` = median time to seal N bytes with ``aead.seal_into``
(4 MiB chunks, preallocated output) / median time to copy N bytes with
``numpy.copyto`` into a preallocated buffer, measured interleaved in the same
run (N = 256 MiB, 64 MiB with quick). Goal: <= 2.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

from tensafe.crypto import aead
from tensafe.crypto.fields import open_field, seal_field
from tensafe.crypto.kem import HybridKemPrivateKey, unwrap_key, wrap_key
from tensafe.crypto.signing import HybridSigningKey

MIB = 1024 * 1024


def _median_s(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _copy_fn(size: int) -> tuple[Callable[[], None], int]:
    try:
        import numpy as np

        src = np.frombuffer(os.urandom(size), dtype=np.uint8)
        dst = np.empty(size, dtype=np.uint8)
        dst.fill(0)  # fault the pages in before timing

        def copy() -> None:
            np.copyto(dst, src)

        return copy, size
    except ImportError:  # numpy is in the server extra; fall back to a buffer slice copy
        srcb = bytearray(os.urandom(size))
        dstb = bytearray(size)

        def copy() -> None:
            dstb[:] = srcb

        return copy, size


def run(quick: bool) -> dict[str, float]:
    size = (64 if quick else 256) * MIB
    reps = 5 if quick else 7
    key = os.urandom(32)

    plaintext = memoryview(bytearray(os.urandom(size)))
    sealed = bytearray(aead.ciphertext_length(size))
    opened = bytearray(size)
    copy, _ = _copy_fn(size)

    def enc() -> None:
        aead.seal_into(key, plaintext, sealed, "tenant", "artifact")

    def dec() -> None:
        aead.open_into(key, sealed, opened, "tenant", "artifact")

    enc()  # warm-up: faults in the output pages, loads OpenSSL code paths
    dec()
    copy()
    enc_t, cpy_t, dec_t = [], [], []
    for _ in range(reps):  # interleaved so background load hits both sides alike
        enc_t.append(_median_s(enc, 1))
        cpy_t.append(_median_s(copy, 1))
        dec_t.append(_median_s(dec, 1))
    assert bytes(opened[:64]) == bytes(plaintext[:64])
    enc_s, cpy_s, dec_s = statistics.median(enc_t), statistics.median(cpy_t), statistics.median(dec_t)

    signer = HybridSigningKey.generate()
    pub = signer.public_key()
    msg = os.urandom(200)  # a checkpoint body is ~200 bytes
    sig = signer.sign(msg)
    n_sig = 100 if quick else 400

    kem_key = HybridKemPrivateKey.generate()
    kem_pub = kem_key.public_key()
    dek = os.urandom(32)
    blob = wrap_key(kem_pub, dek, b"aad")
    n_kem = 200 if quick else 1000

    field = seal_field(key, "tenant", "prompt", b"x" * 256)

    return {
        "encrypt_vs_memcpy_ratio": round(enc_s / cpy_s, 3),
        "encrypt_gbps": round(size / enc_s / 1e9, 2),
        "decrypt_gbps": round(size / dec_s / 1e9, 2),
        "memcpy_gbps": round(size / cpy_s / 1e9, 2),
        "hybrid_sign_ms": round(_median_s(lambda: signer.sign(msg), n_sig) * 1e3, 3),
        "hybrid_verify_ms": round(_median_s(lambda: pub.verify(msg, sig), n_sig) * 1e3, 3),
        "kem_wrap_ms": round(_median_s(lambda: wrap_key(kem_pub, dek, b"aad"), n_kem) * 1e3, 3),
        "kem_unwrap_ms": round(_median_s(lambda: unwrap_key(kem_key, blob, b"aad"), n_kem) * 1e3, 3),
        "field_seal_us": round(
            _median_s(lambda: seal_field(key, "tenant", "prompt", b"x" * 256), 2000) * 1e6, 2
        ),
        "field_open_us": round(_median_s(lambda: open_field(key, "tenant", "prompt", field), 2000) * 1e6, 2),
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
