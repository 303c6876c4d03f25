"""Capacity: the highest arrival rate at which a policy still passes a test (stable; or stable with
P99 E2E under a target), found by bracketing and bisection.

``passes(qps)`` is assumed to hold up to some rate and fail above it.  From ``start`` the rate is
multiplied by ``growth`` (2 by default) while it passes (divided while it fails) until a passing and a failing rate bracket the
boundary; then the bracket is bisected until ``high − low <= resolution × low``.  The answer is the
bracket: the policy passes at ``low`` and fails at ``high`` (``high`` is ``None`` when no tested
rate up to ``max_qps`` failed; ``low`` is ``None`` when none down to ``min_qps`` passed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Bracket:
    low: float | None  # the highest rate that passed
    high: float | None  # the lowest rate that failed
    tried: tuple[tuple[float, bool], ...] = field(default=())  # in the order evaluated


def search(
    passes: Callable[[float], bool],
    *,
    start: float,
    resolution: float = 0.05,
    min_qps: float | None = None,
    max_qps: float | None = None,
    growth: float = 2.0,
) -> Bracket:
    """The boundary of ``passes`` (see the module docstring).  Each rate is evaluated once."""
    if not (math.isfinite(start) and start > 0):
        raise ValueError(f"the search must start at a rate > 0, got {start}")
    if not 0 < resolution < 1:
        raise ValueError(f"resolution must be in (0, 1), got {resolution}")
    if not (math.isfinite(growth) and growth > 1):
        raise ValueError(f"growth must be > 1, got {growth}")
    lo_limit = min_qps if min_qps is not None else start / 64
    hi_limit = max_qps if max_qps is not None else start * 64
    tried: list[tuple[float, bool]] = []

    def test(q: float) -> bool:
        ok = passes(q)
        tried.append((q, ok))
        return ok

    low: float | None = None
    high: float | None = None
    q = start
    if test(q):
        low = q
        while high is None and q < hi_limit:
            q = min(q * growth, hi_limit)  # the limit itself is the last rate tried
            if test(q):
                low = q
            else:
                high = q
    else:
        high = q
        while low is None and q > lo_limit:
            q = max(q / growth, lo_limit)
            if test(q):
                low = q
            else:
                high = q
    if low is None or high is None:
        return Bracket(low=low, high=high, tried=tuple(tried))
    while high - low > resolution * low:
        mid = (low + high) / 2
        if test(mid):
            low = mid
        else:
            high = mid
    return Bracket(low=low, high=high, tried=tuple(tried))
