"""Retries of transient faults, built once from the `retry` settings (tenacity)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from dagent.config import RetryConfig
from dagent.errors import one_line

log = logging.getLogger("dagent.retry")


def _wait(settings: RetryConfig) -> Callable[[RetryCallState], float]:
    # Exponential from backoff_initial, with jitter of up to one initial step so agents spread out.
    backoff = wait_exponential(multiplier=settings.backoff_initial, max=settings.backoff_max) + wait_random(
        0, settings.backoff_initial
    )

    def wait(state: RetryCallState) -> float:
        # A server that says when to come back (429/503 Retry-After) is believed, within backoff_max.
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return float(min(retry_after, settings.backoff_max))
        return float(backoff(state))

    return wait


def logged(
    logger: logging.Logger, level: int, say: Callable[[str, int, float], str], trace: str = "", limit: int = 300
) -> Callable[[RetryCallState], None]:
    """The one tenacity `before_sleep` of dagent: logs `say(error, attempt, delay)` at `level`, the error in
    one line (and its traceback at DEBUG, named `trace`, when one is given). tenacity's own
    `before_sleep_log` prints the exception's repr and the function's name, which a user has no use for."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        if trace:
            logger.debug("%s: attempt %d failed", trace, state.attempt_number, exc_info=error)
        logger.log(level, "%s", say(one_line(error, limit), state.attempt_number, delay))

    return before_sleep


def retrying(settings: RetryConfig, is_transient: Callable[[BaseException], bool], what: str) -> Retrying:
    """A tenacity Retrying that retries only what `is_transient` accepts, then re-raises the real error."""
    return Retrying(
        stop=stop_after_attempt(settings.attempts),
        wait=_wait(settings),
        retry=retry_if_exception(is_transient),
        before_sleep=logged(
            log,
            logging.WARNING,
            lambda error, n, delay: f"{what} failed ({error}); try {n + 1} in {delay:.1f}s",
            limit=200,
        ),
        reraise=True,
    )


def call(settings: RetryConfig, is_transient: Callable[[BaseException], bool], what: str, fn: Callable[[], Any]) -> Any:
    """Call fn with retries of transient faults."""
    return retrying(settings, is_transient, what)(fn)
