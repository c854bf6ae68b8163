"""The inbox's claims, started-markers and results survive a power cut: checked on a real agent's
system calls with strace (a kill -9 cannot tell an fsync'd rename from one still in the page cache)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, infra
from tests.support.helpers import Dagent, agent_config, drop
from tests.support.infra import not_here

pytestmark = pytest.mark.integration


def _syscalls(trace: Path) -> list[tuple[str, str]]:
    """(call, what it names) in order: fsync's file or directory, rename's and link's target."""
    calls = []
    for line in trace.read_text().splitlines():
        match = re.search(r"\b(fsync|fdatasync)\(\d+<([^>]*)>", line)
        if match:
            calls.append((match[1], match[2]))
            continue
        match = re.search(r"\b(rename|renameat2?|link|linkat)\(.*\"([^\"]+)\"[^\"]*\)\s+=\s+0", line)
        if match:
            calls.append((match[1].rstrip("at2").rstrip("at") or match[1], match[2]))
    return calls


def test_claim_marker_and_result_are_fsynced_with_their_directories(dagent: Dagent, image: str) -> None:
    """Each step is followed by an fsync of the directory that holds its new entry, files fsync'd first."""
    try:
        infra.require("strace", "strace")
    except infra.Missing as e:
        not_here(e, "strace")
    inbox = dagent.workdir / "inbox"
    (inbox / "new").mkdir(parents=True)
    drop(inbox, "durable", image=image, command=["true"])
    config = agent_config(dagent, inbox, keep_containers="never")
    trace = dagent.workdir / "strace.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_"))}
    subprocess.run(
        ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat", "-o", str(trace),
         sys.executable, "-m", "dagent", "start", "-c", str(config), "--max-polls", "3"],
        cwd=dagent.workdir, env={**env, "PYTHONPATH": str(REPO)}, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    calls = _syscalls(trace)
    claimed, done = inbox / "claimed" / dagent.name, inbox / "done"

    def after(step: tuple[str, str], then: tuple[str, str]) -> bool:
        return step in calls and then in calls[calls.index(step) + 1 :]

    assert after(("rename", str(claimed / "durable.toml")), ("fsync", str(claimed))), calls
    assert after(("fsync", str(claimed / "durable.started")), ("fsync", str(claimed))), calls
    assert ("fsync", str(done / "durable.json")) not in calls  # written as a temp file, then linked:
    linked = ("link", str(done / "durable.json"))
    tmp = [c for c in calls if c[0] == "fsync" and c[1].startswith(str(done / ".durable."))]
    assert tmp and calls.index(tmp[0]) < calls.index(linked), calls
    assert after(linked, ("fsync", str(done))), calls
    assert (done / "durable.json").exists()
