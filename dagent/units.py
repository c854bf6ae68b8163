"""Docker-style quantities: byte sizes like `512m` and CPU counts (pure)."""

from __future__ import annotations

import re

_BYTES_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(value: object) -> int:
    """Bytes from an int or a Docker size string (`512m`, `2g`, `1.5GiB`; units are binary)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512m or 2g, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON answers may carry whole numbers as floats
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"size must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 512m or 2g, not {type(value).__name__}")
    match = _BYTES_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512m, 2g or 1073741824")
    number, unit, _ = match.groups()
    size = int(float(number) * _FACTORS[unit.lower()])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size
