"""Why a container ended, in words, and the last of its output fit to show (pure: no I/O)."""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from typing import Any

# How much of a failed container's output is shown with its end: enough for the error, little for a log.
TAIL_LINES = 20
TAIL_BYTES = 4096
MASK = "***"


def why(exit_code: int | None, state: Mapping[str, Any], memory: int | None) -> str:
    """How a container ended, from its exit code and `docker inspect`'s State: out of memory, a signal, or exited N."""
    if state.get("OOMKilled") is True:
        limit = f" (memory limit {_size(memory)})" if memory else ""
        return f"was killed for running out of memory{limit}, exit code {exit_code}"
    if exit_code is not None and 128 < exit_code <= 128 + 64:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return f"was killed by {name} (exit code {exit_code})"
    if exit_code is None:
        return "did not end when stopped (no exit code)"
    error = str(state.get("Error") or "").strip()
    if error:
        return f"exited with code {exit_code}: {error.splitlines()[0][:200]}"
    return f"exited with code {exit_code}"


def tail(output: bytes, secrets: Iterable[str] = ()) -> tuple[str, ...]:
    """The last TAIL_LINES lines of a container's output within TAIL_BYTES, each secret replaced by ***.

    Secrets are masked in the whole output before it is cut, so a secret cut in half never shows its end.
    """
    text = output.decode("utf-8", "replace")
    # Longest first, so a secret that holds another is masked whole. Under 4 characters is no secret.
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    cut = text[-TAIL_BYTES:]
    lines = [line.rstrip("\r") for line in cut.splitlines()]
    if len(cut) < len(text) and len(lines) > 1:
        lines = lines[1:]  # the first is cut mid-line (kept when it is all there is)
    return tuple(line for line in lines[-TAIL_LINES:] if line.strip())


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
