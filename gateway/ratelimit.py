"""Per-tenant request rate limit (token bucket): ``429 rate_limited`` with ``Retry-After``.

Off unless ``Settings.rate_limit_rps`` is set. In-process: with several gateways
each enforces its own share.
"""

from __future__ import annotations

import math
import time

from tensafe.gateway.errors import ApiError


class RateLimiter:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    def check(self, tenant_id: str) -> None:
        now = time.monotonic()
        tokens, last = self._buckets.get(tenant_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            self._buckets[tenant_id] = (tokens, now)
            raise ApiError(
                429,
                "rate_limited",
                "too many requests for this tenant",
                {"retry_after_s": round(wait, 3)},
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        self._buckets[tenant_id] = (tokens - 1.0, now)
