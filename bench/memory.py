"""Where an idle dagent's memory goes: the resident size after each library it imports, in the order
`dagent start` imports them, in one fresh interpreter (RSS deltas; what a library shares with the
ones before it is counted once, at the first).

    python -m bench.memory            # prints a table; --json for bench/results
"""

from __future__ import annotations

import json
import subprocess
import sys

STEPS = [
    ("Python itself (this venv's site)", "pass"),
    ("ssl (libssl, libcrypto)", "import ssl"),
    ("dagent's package (it defers asyncio and tarfile: dagent/_lazy.py)", "import dagent"),
    ("pydantic, one model built", "import pydantic\nclass A(pydantic.BaseModel):\n    x: int = 1"),
    ("pydantic-settings", "import pydantic_settings"),
    ("requests (urllib3, charset-normalizer, idna)", "import requests"),
    ("tenacity", "import tenacity"),
    ("dagent's configuration (its pydantic models)", "import dagent.config"),
    ("docker-py, without paramiko", "from dagent import dockerclient\ndockerclient._import_docker(False)"),
    (
        "the rest of dagent that an inbox agent imports",
        "import dagent.cli, dagent.app, dagent.agent, dagent.runtime, dagent.sources.inbox, dagent.hostview",
    ),
    ("prometheus-client (only with health.address)", "import prometheus_client"),
    ("the Prefect source and websocket-client", "import dagent.sources.prefect.source, websocket"),
    ("asyncio, were it loaded (pydantic-settings imports it for its CLI; no agent uses it)",
     "import asyncio\nasyncio.get_event_loop_policy"),
    ("tarfile, were it loaded (docker-py imports it for builds; no agent uses it)", "import tarfile\ntarfile.open"),
]  # fmt: skip

_PROBE = """
import json, sys
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
rows, last = [], rss()
for name, code in json.loads(sys.argv[1]):
    exec(compile(code, name, "exec"), {})
    now = rss()
    rows.append((name, round(now - last if rows else now, 1), round(now, 1)))
    last = now
print(json.dumps(rows))
"""


def measure() -> list[tuple[str, float, float]]:
    """(step, MB it added, MB in all after it), in one fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(STEPS)], capture_output=True, text=True, check=True)
    return [tuple(row) for row in json.loads(out.stdout)]  # type: ignore[misc]


def main() -> int:
    rows = measure()
    if "--json" in sys.argv[1:]:
        print(json.dumps(rows, indent=2))
        return 0
    print("| imported | adds (MB) | resident after it (MB) |\n|---|---|---|")
    for name, added, total in rows:
        print(f"| {name} | {added} | {total} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
