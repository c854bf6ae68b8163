"""Generated documents through the tools a user runs: taplo (an editor's TOML schema check) over the
shipped configs, and `python -m dagent.docs` in a process of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dagent import docs
from tests.support import REPO

CONFIG_FILES = sorted([REPO / "config" / "agent.toml", *REPO.glob("examples/*/agent.toml")])


@pytest.mark.skipif(shutil.which("npx") is None, reason="Node's npx is not installed; taplo needs it")
def test_taplo_accepts_shipped_configs_and_rejects_a_bad_one(tmp_path: Path) -> None:
    """taplo (what Even Better TOML uses) validates the files through their #:schema line."""
    bad = REPO / "examples" / ".taplo-check-bad.toml"
    bad.write_text('#:schema ../schemas/agent.schema.json\n[docker]\npull = "sometimes"\n')
    try:
        files = [str(p) for p in CONFIG_FILES]
        env = {**os.environ, "npm_config_update_notifier": "false"}
        ok = subprocess.run(
            ["npx", "--yes", "@taplo/cli@0.7.0", "check", *files], env=env, capture_output=True, text=True
        )
        if ok.returncode != 0 and "schema" not in ok.stderr:
            pytest.skip(f"taplo could not run here: {ok.stderr.strip().splitlines()[-1:]}")
        assert ok.returncode == 0, ok.stderr
        refused = subprocess.run(["npx", "--yes", "@taplo/cli@0.7.0", "check", str(bad)], env=env, capture_output=True)
        assert refused.returncode != 0
    finally:
        bad.unlink()


def test_docs_module_regenerates_in_a_copy(tmp_path: Path) -> None:
    """`python -m dagent.docs DIR` writes the schema, the reference agent.toml and the docs tables."""
    for sub in ("schemas", "config", "docs"):
        (tmp_path / sub).mkdir()
    (tmp_path / docs.CONFIG_PAGE).write_text(f"x\n{docs.README_BEGIN}\n{docs.README_END}\n")
    (tmp_path / docs.RUNS_PAGE).write_text(f"x\n{docs.RUNFILE_BEGIN}\n{docs.RUNFILE_END}\n")
    (tmp_path / docs.PREFECT_PAGE).write_text(f"x\n{docs.KWARGS_BEGIN}\n{docs.KWARGS_END}\n")
    subprocess.run([sys.executable, "-m", "dagent.docs", str(tmp_path)], check=True, cwd=REPO)
    assert (tmp_path / "config" / "agent.toml").read_text() == docs.reference_toml()
    assert docs.reference_markdown() in (tmp_path / docs.CONFIG_PAGE).read_text()
    assert docs.run_fields_markdown() in (tmp_path / docs.RUNS_PAGE).read_text()
    assert docs.create_kwargs_markdown() in (tmp_path / docs.PREFECT_PAGE).read_text()
