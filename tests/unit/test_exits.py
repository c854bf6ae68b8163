"""How a container ended, in words, and the last of its output (dagent.exits, pure)."""

from __future__ import annotations

import pytest

from dagent.exits import TAIL_BYTES, TAIL_LINES, tail, why


@pytest.mark.parametrize(
    ("code", "state", "memory", "said"),
    [
        (137, {"OOMKilled": True}, 64 << 20, "was killed for running out of memory (memory limit 64 MiB), exit code 137"),
        (137, {"OOMKilled": False}, None, "was killed by SIGKILL (exit code 137)"),
        (143, {}, None, "was killed by SIGTERM (exit code 143)"),
        (3, {}, None, "exited with code 3"),
        (127, {"Error": "exec: \"nope\": executable file not found in $PATH\nmore"}, None,
         'exited with code 127: exec: "nope": executable file not found in $PATH'),
    ],
)  # fmt: skip
def test_why_says_how_the_container_ended(code: int, state: dict[str, object], memory: int | None, said: str) -> None:
    assert why(code, state, memory) == said


def test_the_tail_is_the_last_lines_within_the_byte_cap_with_secrets_masked() -> None:
    output = b"".join(b"line %d\n" % i for i in range(100)) + b"ERROR: could not open /data/input.csv s3cret-token\n"
    lines = tail(output, ["s3cret-token", "ab"])
    assert len(lines) == TAIL_LINES and lines[-1] == "ERROR: could not open /data/input.csv ***"
    big = b"x" * (TAIL_BYTES * 3) + b"\nlast\n"
    assert tail(big) == ("last",)  # the first line, cut mid-way by the byte cap, is dropped
    assert tail(b"y" * 10_000) == ("y" * TAIL_BYTES,)  # one long line: its end, not nothing
    assert tail(b"caf\xe9\r\n") == ("caf\ufffd",)


def test_a_secret_is_masked_before_the_output_is_cut() -> None:
    """A key cut in half by the byte cap must not show its end (review of issue 28's first slice)."""
    secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    output = ("y" * (TAIL_BYTES - 20) + secret + "\n").encode()
    assert not any("RSTUVWXYZ" in line for line in tail(output, [secret]))
    assert tail(b"key=abcd-long and abc\n", ["abcd-long", "abcd", "abc"]) == ("key=*** and abc",)


def test_a_container_that_would_not_stop_has_no_exit_code_to_tell() -> None:
    assert why(None, {}, None) == "did not end when stopped (no exit code)"
