"""One quantile for the agent's pace and the benchmarks' figures, from the standard library."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from fractions import Fraction


def quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1, to a thousandth) of `values`, interpolated between neighbours as `statistics` does
    (its "inclusive" method: the median of two is their mean); 0.0 for no values."""
    data = sorted(values)
    if len(data) < 2:
        return data[0] if data else 0.0
    # q as k/n with the smallest n: statistics.quantiles makes the n - 1 cut points, of which the k-th is
    # at q (0.9 is the 9th of 10; a thousand cut points for one would be as right, and slower).
    share = Fraction(q).limit_denominator(1000)
    if share <= 0:
        return data[0]
    if share >= 1:
        return data[-1]
    return statistics.quantiles(data, n=share.denominator, method="inclusive")[share.numerator - 1]
