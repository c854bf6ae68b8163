"""The Prefect 3 source: the HTTP client, the job-variable mapping, the claim rules, the event stream,
the log shipper, and the source that orchestrates them."""

from dagent.sources.prefect.claims import FINAL_STATES, taken_since_scheduled
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.jobvars import DEFAULT_COMMAND, base_job_template
from dagent.sources.prefect.source import PrefectSource

__all__ = [
    "DEFAULT_COMMAND",
    "FINAL_STATES",
    "PrefectClient",
    "PrefectSource",
    "base_job_template",
    "taken_since_scheduled",
]
