"""The `dagent` command in a process of its own, as a user runs it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dagent import __version__
from dagent.config import leaf_keys
from tests.support import REPO


def _dagent(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_"))}
    return subprocess.run(
        [sys.executable, "-m", "dagent", *args],
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_version() -> None:
    """`dagent --version` prints the package version."""
    result = _dagent("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"dagent {__version__}"


def test_bad_input_in_a_real_process_is_exit_2_without_traceback(tmp_path: Path) -> None:
    """Bad file, env and flag in one real process: exit 2, one line each, no traceback."""
    path = tmp_path / "agent.toml"
    path.write_text("concurrency = 0\n")
    result = _dagent("config", "validate", str(path), "--base-url", "x", env={"DAGENT_DOCKER__PULL": "y"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 3


def test_schema_command_prints_the_committed_schema() -> None:
    """`dagent config schema` prints exactly schemas/agent.schema.json."""
    result = _dagent("config", "schema")
    assert result.returncode == 0
    assert result.stdout == (REPO / "schemas" / "agent.schema.json").read_text()


def test_show_json_shape(tmp_path: Path) -> None:
    """`config show --json` is {"config", "sources"} with every dotted key in sources."""
    result = _dagent("config", "show", "--json", "-n", "x", env={"DAGENT_CONCURRENCY": "3"}, cwd=tmp_path)
    document = json.loads(result.stdout)
    assert set(document) == {"config", "sources"}
    assert set(document["sources"]) == set(leaf_keys())
    assert document["sources"]["name"] == "cli" and document["sources"]["concurrency"] == "env"
    assert document["config"]["name"] == "x" and document["config"]["concurrency"] == 3
