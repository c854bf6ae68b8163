"""dagent.retry: transient faults retried as the `retry` settings say, each retry logged in one line."""

from __future__ import annotations

import logging

import pytest

from dagent.config import RetryConfig
from dagent.retry import call, logged

FAST = RetryConfig(attempts=3, backoff_initial=0.001, backoff_max=0.002)


class Flaky(Exception):
    pass


def test_transient_faults_are_retried_and_each_retry_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    tries: list[int] = []

    def once() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise Flaky("the daemon said 503\nand a second line")
        return "ok"

    with caplog.at_level(logging.WARNING, "dagent.retry"):
        assert call(FAST, lambda e: isinstance(e, Flaky), "GET /x", once) == "ok"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith("GET /x failed (the daemon said 503); try 2 in 0.0")
    assert all("\n" not in line for line in said)


def test_other_faults_are_raised_at_once() -> None:
    tries: list[int] = []

    def once() -> None:
        tries.append(1)
        raise ValueError("not transient")

    with pytest.raises(ValueError, match="not transient"):
        call(FAST, lambda e: isinstance(e, Flaky), "GET /x", once)
    assert tries == [1]


def test_the_logger_cuts_the_error_and_can_add_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from tenacity import Retrying, stop_after_attempt, wait_none

    log = logging.getLogger("dagent.test")
    before = logged(log, logging.INFO, lambda error, n, delay: f"[{error}] {n}", trace="run r1", limit=5)
    with caplog.at_level(logging.DEBUG, "dagent.test"), pytest.raises(Flaky):
        Retrying(stop=stop_after_attempt(2), wait=wait_none(), before_sleep=before, reraise=True)(
            lambda: (_ for _ in ()).throw(Flaky("0123456789"))
        )
    debug, info = caplog.records
    assert (
        debug.levelno == logging.DEBUG
        and debug.exc_info is not None
        and debug.getMessage() == "run r1: attempt 1 failed"
    )
    assert info.levelno == logging.INFO and info.getMessage() == "[01...] 1"  # at most `limit` characters
