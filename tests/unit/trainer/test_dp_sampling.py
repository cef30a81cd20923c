"""Poisson sampler: rate, independence, empty batches, resume, certificate fields."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from tensafe.trainer.sampling import (
    GUARANTEE_CONDITIONAL,
    PoissonSampler,
    sampling_certificate,
)


def test_inclusion_rate_is_q() -> None:
    N, B, steps = 2000, 40, 200
    s = PoissonSampler(N, B, seed=b"rate")
    q = B / N
    sizes = []
    counts = np.zeros(N)
    for _ in range(steps):
        idx = s.sample()
        assert np.all(np.diff(idx) > 0) and (len(idx) == 0 or (idx[0] >= 0 and idx[-1] < N))
        sizes.append(len(idx))
        counts[idx] += 1
    total = sum(sizes)
    # Total inclusions ~ Binomial(N*steps, q): 5-sigma band.
    mu, sd = N * steps * q, math.sqrt(N * steps * q * (1 - q))
    assert abs(total - mu) < 5 * sd
    # Batch sizes vary (Poisson, not fixed-size) with Binomial(N, q) variance.
    var = np.var(sizes, ddof=1)
    assert 0.6 * N * q * (1 - q) < var < 1.5 * N * q * (1 - q)
    # Each example's inclusion count ~ Binomial(steps, q): chi-square goodness of fit of the histogram.
    k = np.arange(0, 12)
    probs = stats.binom.pmf(k, steps, q)
    probs[-1] += stats.binom.sf(k[-1], steps, q)
    obs = np.bincount(np.minimum(counts.astype(int), k[-1]), minlength=len(k))
    assert stats.chisquare(obs, probs * N).pvalue > 1e-3


def test_empty_batches_happen_at_small_q() -> None:
    s = PoissonSampler(100, 0.5, seed=b"empty")  # q = 0.005, P(empty) ~ 0.61
    sizes = [len(s.sample()) for _ in range(200)]
    assert sizes.count(0) > 80 and max(sizes) >= 1


def test_threshold_never_exceeds_q() -> None:
    s = PoissonSampler(3, 1, seed=b"t")
    q = Fraction(s.sample_rate)  # the exact value the accountant is given
    assert Fraction(s._threshold, 1 << 64) <= q
    assert q - Fraction(s._threshold, 1 << 64) < Fraction(1, 1 << 64)
    full = PoissonSampler(5, 5, seed=b"t")
    assert list(full.sample()) == [0, 1, 2, 3, 4]


def test_resume_and_independence() -> None:
    a = PoissonSampler(500, 25, seed=b"r")
    want = [a.sample() for _ in range(6)]
    b = PoissonSampler(500, 25, seed=b"r")
    got = [b.sample() for _ in range(3)]
    c = PoissonSampler(500, 25, seed=b"r")
    c.load_state_dict(b.state_dict())
    got += [c.sample() for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(want, got, strict=True))
    assert c.steps == 6
    # Unseeded samplers are independent of each other.
    u1, u2 = PoissonSampler(10_000, 500), PoissonSampler(10_000, 500)
    assert not np.array_equal(u1.sample(), u2.sample())
    with pytest.raises(ValueError):
        PoissonSampler(501, 25, seed=b"r").load_state_dict(b.state_dict())


def test_certificate_fields() -> None:
    c = sampling_certificate("client_batches", 1234)
    assert c == {
        "sampling_mode": "client_batches",
        "guarantee": GUARANTEE_CONDITIONAL,
        "declared_dataset_size": 1234,
    }
    p = sampling_certificate("poisson", 99)
    assert p["guarantee"] != GUARANTEE_CONDITIONAL and p["dataset_size"] == 99
    with pytest.raises(ValueError):
        sampling_certificate("shuffle", 10)
