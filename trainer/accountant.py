"""Privacy accounting for the Poisson-subsampled Gaussian mechanism.

* ``"rdp"`` (default): Rényi DP over dp-accounting's default order grid. The
  one-step RDP curve of each distinct (σ, q) comes from Google's
  ``dp_accounting.rdp.RdpAccountant`` and is cached; the composed curve is kept
  incrementally, so a step costs O(#orders) and ε is one conversion
  (``dp_accounting``'s ``compute_epsilon``, the Balle et al. 2020 bound).
  Composition order matches ``RdpAccountant.compose`` exactly, so our ε equals
  the library's bit for bit for the same history.
* ``"prv"``: numerical composition of privacy-loss random variables (Gopi et
  al. 2021) via Opacus' ``PRVAccountant``; reports its *upper* bound. Tighter
  than RDP, slower (tens to hundreds of ms per ε). The RDP curve is tracked
  alongside as a fallback (a valid upper bound) should PRV fail numerically.

History is a compact list of (σ, q, count) runs, so σ and q may change between
steps. State is a small JSON-safe dict.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, compute_epsilon

ACCOUNTANTS = ("rdp", "prv")
_log = logging.getLogger(__name__)


class BudgetExceeded(Exception):
    """The next step would push ε past the target; nothing was changed."""

    def __init__(self, epsilon_would_be: float, target_epsilon: float) -> None:
        super().__init__(
            f"privacy budget exceeded: epsilon would be {epsilon_would_be:.6g} > target {target_epsilon:.6g}"
        )
        self.epsilon_would_be = float(epsilon_would_be)
        self.target_epsilon = float(target_epsilon)


_CURVES: dict[tuple[float, float, tuple[float, ...]], np.ndarray] = {}


def rdp_curve(sigma: float, q: float, orders: Sequence[float]) -> np.ndarray:
    """One-step RDP of the Poisson-subsampled Gaussian, from dp-accounting (cached)."""
    key = (float(sigma), float(q), tuple(orders))
    curve = _CURVES.get(key)
    if curve is None:
        acc = dp_accounting.rdp.RdpAccountant(list(orders))
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
        curve = acc.rdp
        curve.setflags(write=False)
        if len(_CURVES) > 4096:  # bound memory in long-lived workers / calibration loops
            _CURVES.clear()
        _CURVES[key] = curve
    return curve


def _validate(sigma: float, q: float) -> None:
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"noise multiplier must be finite and > 0, got {sigma}")
    if not 0 < q <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {q}")


class PrivacyAccountant:
    """RDP (default) or PRV accountant over a heterogeneous (σ, q, count) history."""

    def __init__(
        self,
        kind: str = "rdp",
        delta: float = 1e-5,
        *,
        orders: Sequence[float] | None = None,
        prv_eps_error: float = 0.01,
    ) -> None:
        if kind not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {kind!r}; expected one of {ACCOUNTANTS}")
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.kind = kind
        self.delta = float(delta)
        self._custom_orders = orders is not None
        self.orders: tuple[float, ...] = tuple(float(a) for a in (orders or DEFAULT_RDP_ORDERS))
        self.prv_eps_error = float(prv_eps_error)
        self.history: list[tuple[float, float, int]] = []
        # RDP of all runs but the last; total = _closed + count_last * curve_last.
        self._closed = np.zeros(len(self.orders))
        self._eps_cache: dict[tuple[Any, ...], float] = {}
        self.prv_fallbacks = 0

    # --- composition ----------------------------------------------------------
    @property
    def steps(self) -> int:
        return sum(c for _, _, c in self.history)

    def _rdp_after(self, history: list[tuple[float, float, int]], closed: np.ndarray) -> np.ndarray:
        if not history:
            return closed
        s, q, c = history[-1]
        return closed + c * rdp_curve(s, q, self.orders)

    def _extended(
        self, sigma: float, q: float, steps: int
    ) -> tuple[list[tuple[float, float, int]], np.ndarray]:
        """History and closed-RDP as they would be after ``steps`` more steps at (σ, q)."""
        hist = list(self.history)
        closed = self._closed
        if hist and hist[-1][0] == sigma and hist[-1][1] == q:
            hist[-1] = (sigma, q, hist[-1][2] + steps)
        else:
            if hist:
                closed = self._rdp_after(hist, closed)  # same op order as RdpAccountant.compose
            hist.append((sigma, q, steps))
        return hist, closed

    def step(self, sigma: float, q: float, steps: int = 1) -> None:
        """Record ``steps`` steps at noise multiplier σ and sampling rate q. O(#orders)."""
        sigma, q = float(sigma), float(q)
        _validate(sigma, q)
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.history, self._closed = self._extended(sigma, q, int(steps))
        self._eps_cache.clear()

    # --- epsilon ----------------------------------------------------------------
    def _rdp_epsilon(
        self, history: list[tuple[float, float, int]], closed: np.ndarray, delta: float
    ) -> float:
        if not history:
            return 0.0
        eps, _ = compute_epsilon(self.orders, self._rdp_after(history, closed), delta)
        return float(eps)

    def _prv_epsilon(
        self, history: list[tuple[float, float, int]], closed: np.ndarray, delta: float
    ) -> float:
        if not history:
            return 0.0
        from opacus.accountants import PRVAccountant  # heavy import, only when PRV is used

        acc = PRVAccountant()
        acc.history = [(s, q, c) for s, q, c in history]
        try:
            return float(acc.get_epsilon(delta=delta, eps_error=self.prv_eps_error))
        except (ValueError, RuntimeError, FloatingPointError, OverflowError) as exc:
            # PRV can fail numerically for extreme parameters; RDP is still a valid upper bound.
            self.prv_fallbacks += 1
            _log.warning("PRV accountant failed (%s); using the RDP bound", exc)
            return self._rdp_epsilon(history, closed, delta)

    def _epsilon_for(
        self, history: list[tuple[float, float, int]], closed: np.ndarray, delta: float
    ) -> float:
        key = (tuple(history), delta)
        eps = self._eps_cache.get(key)
        if eps is None:
            if self.kind == "rdp":
                eps = self._rdp_epsilon(history, closed, delta)
            else:
                eps = self._prv_epsilon(history, closed, delta)
            if len(self._eps_cache) > 64:
                self._eps_cache.clear()
            self._eps_cache[key] = eps
        return eps

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (default: the accountant's δ)."""
        return self._epsilon_for(self.history, self._closed, self.delta if delta is None else float(delta))

    def rdp_epsilon(self, delta: float | None = None) -> float:
        """RDP ε regardless of ``kind`` (cross-check / certificate field)."""
        return self._rdp_epsilon(self.history, self._closed, self.delta if delta is None else float(delta))

    def would_be_epsilon(
        self, sigma: float, q: float, steps: int = 1, *, delta: float | None = None
    ) -> float:
        """ε after ``steps`` more steps at (σ, q); the accountant is not changed."""
        sigma, q = float(sigma), float(q)
        _validate(sigma, q)
        hist, closed = self._extended(sigma, q, int(steps))
        return self._epsilon_for(hist, closed, self.delta if delta is None else float(delta))

    def check_budget(self, sigma: float, q: float, target_epsilon: float | None, steps: int = 1) -> float:
        """ε the next step(s) would reach; raises :class:`BudgetExceeded` past the target."""
        eps = self.would_be_epsilon(sigma, q, steps)
        if target_epsilon is not None and eps > target_epsilon:
            raise BudgetExceeded(eps, target_epsilon)
        return eps

    # --- reporting / persistence ---------------------------------------------------
    def dp_metrics(
        self, target_epsilon: float | None = None, sampling_mode: str | None = None
    ) -> dict[str, Any]:
        eps = self.epsilon()
        last = self.history[-1] if self.history else (None, None, 0)
        return {
            "epsilon_spent": eps,
            "epsilon_remaining": None if target_epsilon is None else max(0.0, target_epsilon - eps),
            "delta": self.delta,
            "steps": self.steps,
            "noise_multiplier": last[0],
            "sample_rate": last[1],
            "accountant": self.kind,
            "sampling_mode": sampling_mode,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "kind": self.kind,
            "delta": self.delta,
            "orders": list(self.orders) if self._custom_orders else None,
            "prv_eps_error": self.prv_eps_error,
            "history": [[s, q, c] for s, q, c in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyAccountant:
        if int(state.get("version", 0)) != 1:
            raise ValueError("unsupported accountant state version")
        acc = cls(
            state["kind"], state["delta"], orders=state.get("orders"), prv_eps_error=state["prv_eps_error"]
        )
        # Replay run by run: reproduces the same floating-point sums as the live accountant.
        for s, q, c in state["history"]:
            acc.history, acc._closed = acc._extended(float(s), float(q), int(c))
        return acc


def calibrate_sigma(
    target_eps: float,
    delta: float,
    q: float,
    steps: int,
    accountant: str = "rdp",
    *,
    rtol: float = 1e-4,
    sigma_max: float = 1e4,
) -> float:
    """Smallest σ (to ``rtol``) with ε(σ, q, steps) <= target_eps, by bisection.

    Returns the upper end of the final bracket, so the result always meets the target.
    """
    if target_eps <= 0:
        raise ValueError("target_eps must be > 0")

    def eps(sigma: float) -> float:
        return PrivacyAccountant(accountant, delta).would_be_epsilon(sigma, q, steps)

    if accountant == "rdp":
        lo, hi = 0.5, 1.0
    else:
        # PRV is costly at small σ; RDP (cheap, looser) brackets it from above.
        hi = calibrate_sigma(target_eps, delta, q, steps, "rdp", rtol=1e-2, sigma_max=sigma_max)
        lo = hi * 0.8
    while eps(hi) > target_eps:
        lo, hi = hi, hi * 1.5
        if hi > sigma_max:
            raise ValueError(f"no sigma <= {sigma_max} reaches epsilon {target_eps}")
    while eps(lo) <= target_eps:
        hi, lo = lo, lo * 0.7
        if lo < 1e-3:
            raise ValueError("target epsilon is reached with almost no noise; check the inputs")
    while hi / lo - 1.0 > rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_eps:
            hi = mid
        else:
            lo = mid
    return hi
