"""Docker-style quantities and the bounds every number of a run or a config must keep (pure)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

_BYTES_RE = re.compile(r"\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

# Docker refuses less than 0.01 CPU; less than that would round to nano_cpus = 0, which docker-py
# drops, so the container would run with no limit at all.
MIN_CPUS = 0.01
MAX_CPUS = 4096.0
# Docker refuses a memory limit under 6 MiB; 1 PiB is more than any host has and stays far below
# the int64 the daemon's API carries.
MIN_MEMORY = 6 * 1024**2
MAX_BYTES = 1024**5
# Durations past a year are mistakes, and past ~292 years Python's own waits overflow.
MAX_SECONDS = 366 * 86400.0
MAX_GPUS = 1024


def parse_bytes(value: object) -> int:
    """Bytes from an int or a Docker size string (`512m`, `2g`, `1.5GiB`; units are binary).

    Anything not a positive whole number of bytes up to MAX_BYTES is a ValueError, never an
    OverflowError or a size that rounds to zero.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512m or 2g, not a boolean")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"size must be a finite number of bytes, got {value}")
        if not value.is_integer():
            raise ValueError(f"size must be a whole number of bytes, got {value}")
        value = int(value)  # JSON answers may carry whole numbers as floats
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _BYTES_RE.fullmatch(value)
        if not match:
            raise ValueError(f"{value[:40]!r} is not a size such as 512m, 2g or 1073741824")
        number, unit, _ = match.groups()
        try:
            size = int(Decimal(number) * _FACTORS[unit.lower()])
        except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
            raise ValueError(f"{value[:40]!r} is not a size") from None
    else:
        raise ValueError(f"expected a size such as 512m or 2g, not {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"size must be at least 1 byte, got {value!r}"[:120])
    if size > MAX_BYTES:
        raise ValueError(f"size must be at most {MAX_BYTES} bytes (1 PiB)")
    return size


_DURATION_RE = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*([smhd]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, zero: bool = False) -> float:
    """Seconds from a number or `90`, `90s`, `15m`, `24h`, `2d`: finite, positive (or 0 with `zero`), bounded."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 24h or 2d, not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
        seconds = float(match.group(1)) * _SECONDS[match.group(2).lower()]
    else:
        raise ValueError(f"{str(value)[:40]!r} is not a duration such as 30m, 24h or 2d")
    low_ok = seconds >= 0 if zero else seconds > 0
    if not low_ok or not seconds <= MAX_SECONDS:  # both false for nan
        raise ValueError(f"a duration is more than 0 and at most {MAX_SECONDS / 86400:g}d, got {value!r}")
    return seconds


@cache
def _datetimes() -> TypeAdapter[datetime]:
    return TypeAdapter(datetime)  # built at the first time read, not at import


def parse_time(value: Any) -> datetime | None:
    """A time as an API writes it (ISO 8601, a Z or an offset, up to nanoseconds), in UTC; None if it is not one.

    One parser for every time dagent reads (Prefect's states and schedules, Docker's container times):
    pydantic's. A time with no offset is taken as UTC."""
    if value is None or value == "":
        return None
    try:
        parsed = _datetimes().validate_python(value)
    except ValidationError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
