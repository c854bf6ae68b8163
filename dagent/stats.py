"""One quantile for the agent's pace and the benchmarks' figures, from the standard library."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1, to a thousandth) of `values`, interpolated between neighbours as `statistics` does
    (its "inclusive" method: the median of two is their mean); 0.0 for no values."""
    data = sorted(values)
    if len(data) < 2:
        return data[0] if data else 0.0
    # quantiles(n=1000) gives the 999 cut points 0.001 … 0.999: the one at q, to a thousandth.
    k = round(q * 1000)
    if k <= 0:
        return data[0]
    if k >= 1000:
        return data[-1]
    return statistics.quantiles(data, n=1000, method="inclusive")[k - 1]
