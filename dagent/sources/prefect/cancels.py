"""Which of this agent's runs are CANCELLING: heard on the event stream (each event borne out by the
run's state, once: anyone who may write events could send one), else asked over REST once per poll
interval, and only rarely while events flow (to cover an event lost in a reconnect)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.flowruns import FlowRuns
from dagent.sources.prefect.runbook import RunBook

log = logging.getLogger("dagent.prefect")

# Seconds between cancellation checks over REST while the event stream reports cancellations.
CANCEL_CHECK_STREAMING = 60.0


class CancelWatch:
    """Asked by the loop thread, which alone calls it."""

    def __init__(
        self, client: PrefectClient, runs: FlowRuns, book: RunBook, streaming: Callable[[], bool], interval: float
    ) -> None:
        self.client = client
        self.runs = runs
        self.book = book
        self.streaming = streaming
        self.interval = interval
        self._last_check = 0.0

    def cancelling(self, run_ids: Sequence[str]) -> Sequence[str]:
        """Of `run_ids`, those in CANCELLING now, as far as this agent can tell."""
        if self.streaming():
            heard, new = self.book.cancelling(run_ids)
            confirmed = [r for r in new if self._still_cancelling(r)]
            asked = self.book.confirm_cancelling(confirmed, heard)
            if asked:
                return asked
        now = time.monotonic()
        every = CANCEL_CHECK_STREAMING if self.streaming() else max(self.interval, 2.0)
        if now - self._last_check < every:
            return []
        self._last_check = now
        found = (
            self.client.call(
                "POST",
                "/flow_runs/filter",
                {
                    "flow_runs": {"id": {"any_": list(run_ids)}, "state": {"type": {"any_": ["CANCELLING"]}}},
                    "limit": len(run_ids),
                },
            )
            or []
        )
        return [r["id"] for r in found if isinstance(r, dict) and isinstance(r.get("id"), str)]

    def _still_cancelling(self, run_id: str) -> bool:
        kind = (self.runs.state(run_id) or {}).get("type")
        if kind not in ("CANCELLING", "CANCELLED"):
            log.warning("flow run %s: a CANCELLING event the run's state does not bear out (%s); not stopping it",
                        run_id, kind)  # fmt: skip
            self.book.unhear_cancelling(run_id, str(kind))
            return False
        return True
