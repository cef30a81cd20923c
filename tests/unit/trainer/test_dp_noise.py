"""The CSPRNG Gaussian source: distribution, independence, reproducibility, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from tensafe.trainer.noise import AesCtrStream, GaussianNoiseSource, box_muller, derive_key

N = 200_000
SIGMA, C = 1.3, 0.7


def test_noise_has_std_sigma_C_and_mean_zero() -> None:
    z = GaussianNoiseSource(b"fixed-test-seed").normal((N,), SIGMA * C, dtype=torch.float64).numpy()
    std = SIGMA * C
    # Mean: |mean| within 4 standard errors.
    assert abs(z.mean()) < 4 * std / math.sqrt(N)
    # Variance: (n-1) s^2 / std^2 ~ chi2(n-1); two-sided test at 1e-3.
    chi = (N - 1) * z.var(ddof=1) / std**2
    p_var = 2 * min(stats.chi2.cdf(chi, N - 1), stats.chi2.sf(chi, N - 1))
    assert p_var > 1e-3, (z.std(), std)
    # Shape: Kolmogorov-Smirnov against N(0, std^2).
    assert stats.kstest(z, "norm", args=(0.0, std)).pvalue > 1e-3
    # The tests above really discriminate: a 2% wrong std is rejected.
    chi_bad = (N - 1) * z.var(ddof=1) / (1.02 * std) ** 2
    assert 2 * min(stats.chi2.cdf(chi_bad, N - 1), stats.chi2.sf(chi_bad, N - 1)) < 1e-3


def test_tails_and_pairs_are_gaussian() -> None:
    z = GaussianNoiseSource(b"tails").standard_normal(N).numpy()
    # Tail mass beyond 3 sigma: 0.0027 expected, binomial 5-sigma band.
    p3 = 2 * stats.norm.sf(3)
    assert abs(np.mean(np.abs(z) > 3) - p3) < 5 * math.sqrt(p3 * (1 - p3) / N)
    # The two Box-Muller outputs of a pair are uncorrelated.
    r = np.corrcoef(z[0::2], z[1::2])[0, 1]
    assert abs(r) < 4 / math.sqrt(N / 2)


def test_unseeded_sources_differ_and_seeded_ones_repeat() -> None:
    a = GaussianNoiseSource().normal((1000,), 1.0)
    b = GaussianNoiseSource().normal((1000,), 1.0)
    assert not torch.equal(a, b)
    assert GaussianNoiseSource().seeded is False
    s1 = GaussianNoiseSource(b"seed").normal((1000,), 1.0)
    s2 = GaussianNoiseSource(b"seed").normal((1000,), 1.0)
    s3 = GaussianNoiseSource(b"other").normal((1000,), 1.0)
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert "os.urandom" in GaussianNoiseSource().describe()
    assert "test-mode" in GaussianNoiseSource(b"x").describe()


def test_stream_is_aes_ctr_keystream() -> None:
    # Independent check against a one-shot AES-256-CTR encryption of zeros.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = derive_key(b"k", b"label")
    ks = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16 * 10))
    s = AesCtrStream(key)
    assert s.read_blocks(3) + s.read_blocks(7) == ks
    s2 = AesCtrStream(key, position=4)
    assert s2.read_blocks(2) == ks[64:96]
    # Box-Muller on those words is what the source returns.
    src = GaussianNoiseSource(b"k", label=b"label")
    words = np.frombuffer(ks[:32], dtype="<u8")
    got = src.standard_normal(4)
    assert torch.equal(got, box_muller(words))
    # ... and that is textbook Box-Muller on 53-bit uniforms u1 in (0, 1], u2 in [0, 1).
    k = (words >> np.uint64(11)).astype(np.float64)
    u1, u2 = (k[0::2] + 1) * 2.0**-53, k[1::2] * 2.0**-53
    r, th = np.sqrt(-2 * np.log(u1)), 2 * np.pi * u2
    want = np.stack([r * np.cos(th), r * np.sin(th)], 1).reshape(-1)
    assert np.allclose(got.numpy(), want, rtol=0, atol=1e-14)


def test_resume_reproduces_the_uninterrupted_stream() -> None:
    full = GaussianNoiseSource(b"resume")
    want = [full.normal((n,), 0.5) for n in (5, 128, 1, 77)]
    first = GaussianNoiseSource(b"resume")
    got = [first.normal((n,), 0.5) for n in (5, 128)]
    state = first.state_dict()
    second = GaussianNoiseSource(b"resume")
    second.load_state_dict(state)
    got += [second.normal((n,), 0.5) for n in (1, 77)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert state["position"] == 3 + 64  # ceil(n/2) blocks per call
    assert "key" not in state  # the key never leaves the process


def test_unseeded_state_does_not_restore_a_predictable_stream() -> None:
    a = GaussianNoiseSource()
    a.normal((10,), 1.0)
    b = GaussianNoiseSource()
    b.load_state_dict(a.state_dict())
    assert not torch.equal(a.normal((10,), 1.0), b.normal((10,), 1.0))
    with pytest.raises(ValueError):
        GaussianNoiseSource(b"x").load_state_dict(a.state_dict())


def test_dtype_device_shape_and_bad_std() -> None:
    t = GaussianNoiseSource(b"d").normal((3, 4), 2.0, dtype=torch.bfloat16)
    assert t.shape == (3, 4) and t.dtype == torch.bfloat16 and t.device.type == "cpu"
    assert GaussianNoiseSource(b"d").normal((0,), 1.0).numel() == 0
    with pytest.raises(ValueError):
        GaussianNoiseSource(b"d").normal((3,), -1.0)
    with pytest.raises(ValueError):
        GaussianNoiseSource(b"")
