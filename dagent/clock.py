"""Time as the fleet logic reads it: one seam, so its tests step a clock instead of sleeping.

`SYSTEM` is the real clock (and real timers, each a daemon thread). A test passes a clock whose time
moves only when told, and whose timers fire as it moves past them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Protocol


class Timer(Protocol):
    """A pending call, as `Clock.call_later` returns it."""

    def cancel(self) -> None: ...

    def is_alive(self) -> bool: ...


class Clock(Protocol):
    """Monotonic seconds, wall-clock seconds, the UTC time, and a call after a delay."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def now(self) -> datetime: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer: ...


class SystemClock:
    """The host's clocks; a timer is a daemon `threading.Timer`."""

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def time(self) -> float:
        """time.time()."""
        return time.time()

    def now(self) -> datetime:
        """The UTC time, timezone-aware."""
        return datetime.now(timezone.utc)

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Call `fn` in a thread of its own after `delay` seconds."""
        timer = threading.Timer(max(0.0, delay), fn)
        timer.daemon = True
        timer.start()
        return timer


SYSTEM: Clock = SystemClock()
