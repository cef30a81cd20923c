"""Honest batch sampling for DP-SGD (Poisson subsampling), and sampling modes.

The RDP/PRV/PLD accountants analyse the *Poisson-subsampled* Gaussian
mechanism: at every step each example joins the batch independently with
probability q. Shuffled fixed-size batches or client-picked batches are a
different mechanism; reporting the Poisson ε for them is not honest.

Two modes:

* ``"poisson"`` — the server holds the dataset and draws the batch itself with
  :class:`PoissonSampler`. ε is exact for that process.
* ``"client_batches"`` — the client sends batches. ε is computed *as if* the
  client Poisson-sampled with q = expected_batch_size / declared_dataset_size;
  the certificate says ``guarantee="conditional_on_client_sampling"`` and
  carries the declared size. It is never reported unconditionally.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

import numpy as np
from tensafe.trainer.noise import AesCtrStream, derive_key

SAMPLING_POISSON = "poisson"
SAMPLING_CLIENT = "client_batches"
SAMPLING_MODES = (SAMPLING_POISSON, SAMPLING_CLIENT)

GUARANTEE_POISSON = "poisson_subsampled_gaussian"
GUARANTEE_CONDITIONAL = "conditional_on_client_sampling"

SAMPLER_LABEL = b"tensafe/poisson-sampler/v1"


def sampling_certificate(mode: str, dataset_size: int) -> dict[str, Any]:
    """The certificate fields that say what the ε rests on."""
    if mode == SAMPLING_POISSON:
        return {"sampling_mode": mode, "guarantee": GUARANTEE_POISSON, "dataset_size": int(dataset_size)}
    if mode == SAMPLING_CLIENT:
        return {
            "sampling_mode": mode,
            "guarantee": GUARANTEE_CONDITIONAL,
            "declared_dataset_size": int(dataset_size),
        }
    raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")


class PoissonSampler:
    """Each step, every index in [0, N) is included independently with prob q = B/N.

    Randomness comes from an AES-256-CTR keystream (os.urandom key, or a key
    derived from ``seed`` in test mode). Inclusion test: a uniform 64-bit word
    w is kept iff w < floor(q * 2^64), computed exactly with rationals, so the
    realised rate never exceeds the q the accountant is told (it is below q by
    less than 2^-64).

    Batches may be empty; an empty batch is still a DP step (noise only).
    Cost is O(N) keystream per step (8 bytes per example), ~GB/s.
    """

    def __init__(self, dataset_size: int, expected_batch_size: float, seed: bytes | None = None) -> None:
        if dataset_size <= 0:
            raise ValueError("dataset_size must be > 0")
        if not 0 < expected_batch_size <= dataset_size:
            raise ValueError("expected_batch_size must be in (0, dataset_size]")
        self.dataset_size = int(dataset_size)
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = self.expected_batch_size / self.dataset_size
        self.seeded = seed is not None
        key = derive_key(seed, SAMPLER_LABEL) if seed is not None else os.urandom(32)
        self._stream = AesCtrStream(key)
        self.steps = 0
        # Exact threshold: the float q is a dyadic rational, so this is exact.
        self._threshold = int(Fraction(self.sample_rate) * (1 << 64))  # floor for positive values

    def sample(self) -> np.ndarray:
        """Sorted int64 indices of this step's batch (possibly empty)."""
        self.steps += 1
        if self._threshold >= 1 << 64:
            self._stream.uint64(self.dataset_size)  # keep stream positions uniform across q
            return np.arange(self.dataset_size, dtype=np.int64)
        words = self._stream.uint64(self.dataset_size)
        return np.flatnonzero(words < np.uint64(self._threshold)).astype(np.int64)

    def state_dict(self) -> dict[str, Any]:
        # As for noise, the key is never written: production resumes with a
        # fresh key, test mode re-derives it from the seed.
        return {
            "version": 1,
            "seeded": self.seeded,
            "position": self._stream.position,
            "steps": self.steps,
            "dataset_size": self.dataset_size,
            "expected_batch_size": self.expected_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 0)) != 1:
            raise ValueError("unsupported sampler state version")
        if int(state["dataset_size"]) != self.dataset_size or float(state["expected_batch_size"]) != (
            self.expected_batch_size
        ):
            raise ValueError("sampler state was saved for a different dataset size / batch size")
        if bool(state["seeded"]) != self.seeded:
            raise ValueError("sampler state mode (seeded/unseeded) does not match this sampler")
        self.steps = int(state["steps"])
        if self.seeded:
            self._stream.position = int(state["position"])
