"""Cryptographically secure Gaussian noise for DP-SGD.

Why not ``torch.normal`` with an ``os.urandom`` seed: torch's CPU generator is a
Mersenne Twister (and CUDA's is Philox) seeded with 64 bits. MT19937 is
predictable from ~624 outputs, and a 64-bit seed is a small key anyway, so the
noise that hides each example would be recoverable by anyone who can guess or
reconstruct the generator state. Opacus' ``secure_mode`` fixes that with
torchcsprng, which cannot be installed here.

What we do instead: every noise sample derives from an AES-256-CTR keystream
(a standard CSPRNG construction, NIST SP 800-90A CTR_DRBG uses the same core)
keyed with 32 bytes from ``os.urandom``. Each 16-byte block gives two 53-bit
uniforms, which Box–Muller (float64) turns into two N(0, 1) samples; the result
is scaled and cast to the target dtype. OpenSSL's AES-NI keystream runs at
several GB/s, so the noise costs far less than one backward pass.

Test mode: with ``seed`` given, the AES key is HKDF-SHA256(seed) and the stream
position is saved and restored, so a killed-and-resumed run draws exactly the
noise an uninterrupted run would. Such noise is predictable by whoever knows the
seed: test mode must never back a privacy claim (the certificate says so).

Known limitation (documented in docs/DP.md): this is floating-point Gaussian
noise. Mironov-style floating-point attacks on textbook samplers are not
addressed; a discrete Gaussian would be needed for that.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NOISE_LABEL = b"tensafe/dp-noise/v1"
_BLOCK = 16
_TWO_POW_M53 = 2.0**-53


def derive_key(seed: bytes, label: bytes) -> bytes:
    """32-byte AES key from a test seed; the label separates independent streams."""
    if not isinstance(seed, bytes | bytearray) or len(seed) == 0:
        raise ValueError("seed must be non-empty bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(bytes(seed))


class AesCtrStream:
    """AES-256-CTR keystream addressed by 16-byte block position.

    The initial counter block is the 128-bit big-endian block index, so the
    stream can be resumed at any block without replaying it.
    """

    def __init__(self, key: bytes, position: int = 0) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 key must be 32 bytes")
        self._key = bytes(key)
        self.position = int(position)  # next unused block

    def _keystream(self, nblocks: int) -> bytearray:
        if nblocks < 0:
            raise ValueError("nblocks must be >= 0")
        n = nblocks * _BLOCK
        out = bytearray(n + _BLOCK - 1)  # update_into wants block_size - 1 spare bytes
        if nblocks:
            counter = self.position.to_bytes(16, "big")
            enc = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
            # Encrypting zeros yields the raw keystream, written in place (no extra copies).
            enc.update_into(bytes(n), out)
        self.position += nblocks
        return out

    def read_blocks(self, nblocks: int) -> bytes:
        return bytes(self._keystream(nblocks)[: nblocks * _BLOCK])

    def uint64(self, n: int) -> np.ndarray:
        """n uniform 64-bit words (consumes ceil(n/2) blocks)."""
        nblocks = (n + 1) // 2
        return np.frombuffer(self._keystream(nblocks), dtype="<u8", count=2 * nblocks)[:n]


def box_muller(words: np.ndarray) -> torch.Tensor:
    """Standard normals (float64 tensor) from an even number of uniform 64-bit words.

    u1 = (k1 + 1) 2^-53 lies in (0, 1] so log(u1) is finite; u2 = k2 2^-53 in [0, 1).
    The largest |z| is sqrt(-2 ln 2^-53) ~ 8.57: a truncation at a tail mass ~1e-17.
    torch's vectorised float64 log/sqrt/cos/sin run ~3x faster than numpy's here.
    """
    k = torch.from_numpy((words >> np.uint64(11)).astype(np.int64)).to(torch.float64).view(-1, 2)
    u1 = (k[:, 0] + 1.0) * _TWO_POW_M53
    u2 = k[:, 1] * _TWO_POW_M53
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1).reshape(-1)


class GaussianNoiseSource:
    """Gaussian samples whose every bit derives from an AES-256-CTR CSPRNG.

    ``seed=None``: key from ``os.urandom`` (production). ``seed=bytes``: key
    derived from the seed (test mode; reproducible, NOT secret).
    """

    def __init__(self, seed: bytes | None = None, *, label: bytes = NOISE_LABEL) -> None:
        self.seeded = seed is not None
        key = derive_key(seed, label) if seed is not None else os.urandom(32)
        self._stream = AesCtrStream(key)

    @property
    def position(self) -> int:
        return self._stream.position

    def describe(self) -> str:
        how = "seeded-test-mode" if self.seeded else "os.urandom"
        return f"aes-256-ctr({how})+box-muller-f64"

    def standard_normal(self, n: int) -> torch.Tensor:
        """n N(0,1) samples (float64 CPU tensor); consumes ceil(n/2) blocks."""
        if n == 0:
            return torch.zeros(0, dtype=torch.float64)
        words = self._stream.uint64(2 * ((n + 1) // 2))
        return box_muller(words)[:n]

    def normal(
        self,
        shape: tuple[int, ...] | torch.Size,
        std: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """N(0, std^2) tensor; scaling happens in float64 before the cast."""
        if std < 0 or not math.isfinite(std):
            raise ValueError("std must be finite and >= 0")
        n = math.prod(shape)
        z = self.standard_normal(n) * float(std)
        return z.reshape(tuple(shape)).to(device=device, dtype=dtype)

    # --- resume -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # The key itself is never saved: in production a resumed run simply
        # continues with a fresh os.urandom key (independent noise is still
        # correct noise); in test mode the seed re-derives it.
        return {"version": 1, "seeded": self.seeded, "position": self._stream.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", 0)) != 1:
            raise ValueError("unsupported noise state version")
        if bool(state["seeded"]) != self.seeded:
            raise ValueError("noise state mode (seeded/unseeded) does not match this source")
        if self.seeded:
            self._stream.position = int(state["position"])
