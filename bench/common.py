"""What both benchmarks share: where the repository is, and how requests and samples are summed up."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def by_kind(requests: list[tuple[str, str]], per: float) -> dict[str, float]:
    """Requests grouped by method and path, ids and queries blanked, divided by `per`."""
    kinds = Counter(f"{method} {_ID.sub('{id}', path.split('?')[0])}" for method, path in requests)
    return {kind: round(n / per, 2) for kind, n in kinds.most_common()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
