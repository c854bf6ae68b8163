"""What both benchmarks share: where the repository is, and how requests and samples are summed up."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def by_kind(requests: list[tuple[str, str]], per: float) -> dict[str, float]:
    """Requests grouped by method and path, ids and queries blanked, divided by `per`."""
    kinds = Counter(f"{method} {_ID.sub('{id}', path.split('?')[0])}" for method, path in requests)
    return {kind: round(n / per, 2) for kind, n in kinds.most_common()}


def prefect_worker_pool(venv: Path, api_url: str, home: Path, pool: str) -> None:
    """A docker work pool made as a user of Prefect's worker makes it: with the CLI and its default template."""
    env = {"PREFECT_API_URL": api_url, "PATH": "/usr/bin:/bin", "PREFECT_HOME": str(home / "ph")}
    cli = str(venv / "bin" / "prefect")
    template = subprocess.run([cli, "work-pool", "get-default-base-job-template", "--type", "docker"],
                              env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = home / f"{pool}.json"
    path.write_text(template)
    subprocess.run([cli, "work-pool", "create", pool, "--type", "docker", "--base-job-template", str(path)],
                   env=env, check=True, capture_output=True)  # fmt: skip
