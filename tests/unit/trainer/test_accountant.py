"""Accountant: exact agreement with dp-accounting RDP; PLD / PRV cross-checks; budget; state."""

from __future__ import annotations

import json
import statistics
import time

import dp_accounting
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from tensafe.trainer.accountant import BudgetExceeded, PrivacyAccountant, calibrate_sigma

DELTA = 1e-5
SIGMAS = (0.8, 1.0, 2.0)
QS = (0.001, 0.01, 0.05)
STEPS = (10, 100, 1000)


def dp_accounting_rdp(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    acc = dp_accounting.rdp.RdpAccountant(list(DEFAULT_RDP_ORDERS))
    for s, q, c in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), c)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("q", QS)
def test_rdp_equals_dp_accounting(sigma: float, q: float) -> None:
    acc = PrivacyAccountant("rdp", DELTA)
    done = 0
    for steps in STEPS:
        acc.step(sigma, q, steps - done)  # incremental, run-length history
        done = steps
        ref = dp_accounting_rdp([(sigma, q, steps)])
        assert acc.epsilon() == pytest.approx(ref, rel=1e-6)
    # Single steps compose to the same thing as one batched run.
    one_by_one = PrivacyAccountant("rdp", DELTA)
    for _ in range(10):
        one_by_one.step(sigma, q)
    assert one_by_one.history == [(sigma, q, 10)]
    assert one_by_one.epsilon() == pytest.approx(dp_accounting_rdp([(sigma, q, 10)]), rel=1e-12)


# PLD / PRV are slower: each (sigma, q) pair once, with steps rotating over the grid.
LATIN = [(s, q, STEPS[(i + j) % 3]) for i, s in enumerate(SIGMAS) for j, q in enumerate(QS)]


@pytest.mark.parametrize(("sigma", "q", "steps"), LATIN)
def test_rdp_and_prv_against_pld_bounds(sigma: float, q: float, steps: int) -> None:
    vdi = 1e-3
    upper = pld.from_gaussian_mechanism(sigma, sampling_prob=q, value_discretization_interval=vdi)
    lower = pld.from_gaussian_mechanism(
        sigma,
        sampling_prob=q,
        value_discretization_interval=vdi,
        pessimistic_estimate=False,
        use_connect_dots=False,
    )
    lo = lower.self_compose(steps).get_epsilon_for_delta(DELTA)
    up = upper.self_compose(steps).get_epsilon_for_delta(DELTA)
    assert lo <= up
    rdp = PrivacyAccountant("rdp", DELTA)
    rdp.step(sigma, q, steps)
    prv = PrivacyAccountant("prv", DELTA)
    prv.step(sigma, q, steps)
    e_rdp, e_prv = rdp.epsilon(), prv.epsilon()
    # RDP is a valid but looser upper bound: never below the optimistic PLD estimate.
    assert e_rdp >= lo
    # PRV (upper bound, eps_error 0.01) lands within the PLD bracket, up to its error.
    assert lo - 0.01 <= e_prv <= up + 2 * prv.prv_eps_error
    assert e_prv <= e_rdp
    assert prv.rdp_epsilon() == pytest.approx(e_rdp, rel=1e-12)


def test_heterogeneous_history_matches_dp_accounting() -> None:
    runs = [(1.0, 0.01, 30), (2.0, 0.01, 20), (1.0, 0.05, 5), (1.0, 0.01, 7)]
    acc = PrivacyAccountant("rdp", DELTA)
    for s, q, c in runs:
        for _ in range(c):
            acc.step(s, q)
    assert acc.history == runs and acc.steps == 62
    assert acc.epsilon() == pytest.approx(dp_accounting_rdp(runs), rel=1e-12)
    prv = PrivacyAccountant("prv", DELTA)
    for s, q, c in runs:
        prv.step(s, q, c)
    assert prv.epsilon() <= acc.epsilon()


def test_would_be_epsilon_changes_nothing_and_predicts_the_step() -> None:
    acc = PrivacyAccountant("rdp", DELTA)
    acc.step(1.0, 0.02, 50)
    before = json.dumps(acc.state_dict())
    e0 = acc.epsilon()
    w = acc.would_be_epsilon(1.0, 0.02)
    assert json.dumps(acc.state_dict()) == before and acc.epsilon() == e0
    assert w > e0
    acc.step(1.0, 0.02)
    assert acc.epsilon() == w  # bit for bit: same sums in the same order
    w_other = acc.would_be_epsilon(1.5, 0.03, steps=3)  # a new (sigma, q) run
    acc.step(1.5, 0.03, 3)
    assert acc.epsilon() == w_other
    assert w_other == pytest.approx(dp_accounting_rdp([(1.0, 0.02, 51), (1.5, 0.03, 3)]), rel=1e-12)


def test_check_budget_raises_with_numbers() -> None:
    acc = PrivacyAccountant("rdp", DELTA)
    acc.step(1.0, 0.01, 100)
    e_next = acc.would_be_epsilon(1.0, 0.01)
    target = (acc.epsilon() + e_next) / 2
    before = acc.state_dict()
    with pytest.raises(BudgetExceeded) as ei:
        acc.check_budget(1.0, 0.01, target)
    assert ei.value.epsilon_would_be == e_next and ei.value.target_epsilon == target
    assert acc.state_dict() == before
    assert acc.check_budget(1.0, 0.01, e_next) == e_next  # exactly at target is allowed
    assert acc.check_budget(1.0, 0.01, None) == e_next


def test_state_roundtrip_is_json_and_exact() -> None:
    for kind in ("rdp", "prv"):
        acc = PrivacyAccountant(kind, 1e-6)
        acc.step(1.1, 0.004, 40)
        acc.step(0.9, 0.004, 3)
        d = json.loads(json.dumps(acc.state_dict()))
        back = PrivacyAccountant.from_state_dict(d)
        assert back.history == acc.history and back.delta == 1e-6 and back.kind == kind
        assert back.epsilon() == acc.epsilon()
        assert len(json.dumps(d)) < 400  # compact
        m = back.dp_metrics(target_epsilon=5.0, sampling_mode="poisson")
        assert m["steps"] == 43 and m["noise_multiplier"] == 0.9 and m["sample_rate"] == 0.004
        assert m["epsilon_remaining"] == pytest.approx(5.0 - m["epsilon_spent"])
        assert m["accountant"] == kind and m["delta"] == 1e-6 and m["sampling_mode"] == "poisson"


def test_incremental_step_is_cheap() -> None:
    acc = PrivacyAccountant("rdp", DELTA)
    acc.step(1.0, 0.01)  # warm the curve cache
    step_t, full_t = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        acc.step(1.0, 0.01)
        t1 = time.perf_counter()
        acc.check_budget(1.0, 0.01, 100.0)
        t2 = time.perf_counter()
        step_t.append(t1 - t0)
        full_t.append(t2 - t0)
    assert statistics.median(step_t) < 1e-3
    assert statistics.median(full_t) < 5e-3  # generous: shared CI cores; bench reports the real figure
    assert acc.epsilon() == pytest.approx(dp_accounting_rdp([(1.0, 0.01, 201)]), rel=1e-12)


def test_calibrate_sigma_meets_the_target_tightly() -> None:
    q, steps, target = 0.01, 500, 2.0
    s = calibrate_sigma(target, DELTA, q, steps, "rdp")
    assert PrivacyAccountant("rdp", DELTA).would_be_epsilon(s, q, steps) <= target
    assert PrivacyAccountant("rdp", DELTA).would_be_epsilon(s * 0.995, q, steps) > target
    s_prv = calibrate_sigma(target, DELTA, q, steps, "prv", rtol=3e-2)
    assert s_prv < s  # PRV is tighter, so less noise reaches the same epsilon
    assert PrivacyAccountant("prv", DELTA).would_be_epsilon(s_prv, q, steps) <= target


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        PrivacyAccountant("gdp")
    acc = PrivacyAccountant()
    with pytest.raises(ValueError):
        acc.step(0.0, 0.1)
    with pytest.raises(ValueError):
        acc.step(1.0, 0.0)
    assert acc.epsilon() == 0.0 and acc.steps == 0
