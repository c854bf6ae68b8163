"""A stand-in for the flow engine, for runs that must cost the server and not the machine (bench --scale).

It does to the API what `prefect flow-run execute` does to it for a flow that returns at once:
propose RUNNING, then COMPLETED, for the run in PREFECT__FLOW_RUN_ID, in milliseconds instead of
seconds of CPU. Standard library only; exits 1 if the server refuses RUNNING (cancelled, taken).
STANDIN_SECONDS (default 0) is how long the "flow" runs between the two.
"""

import json
import os
import sys
import time
import urllib.request


def propose(kind: str, name: str) -> str:
    url = f"{os.environ['PREFECT_API_URL'].rstrip('/')}/flow_runs/{os.environ['PREFECT__FLOW_RUN_ID']}/set_state"
    body = json.dumps({"state": {"type": kind, "name": name}, "force": False}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.loads(response.read())["status"])


if __name__ == "__main__":
    if propose("RUNNING", "Running") != "ACCEPT":
        sys.exit(1)
    time.sleep(float(os.environ.get("STANDIN_SECONDS", "0")))
    propose("COMPLETED", "Completed")
