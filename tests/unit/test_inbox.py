"""The inbox's rules on a real directory: claiming, routing, exactly-once reports, restart recovery."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import pytest

from dagent.cli import build_parser
from dagent.config import load_config
from dagent.contracts import ContainerInfo, RunResult
from dagent.sources.inbox import InboxSource
from tests.conftest import REPO


def _source(tmp_path: Path, name: str = "a", labels: list[str] | None = None) -> InboxSource:
    config = load_config(
        {"name": name, "labels": labels or [], "inbox": {"path": str(tmp_path / "inbox")}}, environ={}
    ).config
    source = InboxSource(config)
    source.connect()
    return source


def _drop(source: InboxSource, name: str, text: str = 'image = "busybox"\n') -> None:
    (source.new / f"{name}.toml").write_text(text)


def _result(run_id: str, outcome: str = "succeeded", code: int | None = 0) -> RunResult:
    return RunResult(run_id, outcome, code, "cid", "t0", "t1")  # type: ignore[arg-type]


def test_claim_moves_the_file_and_only_one_agent_wins(tmp_path: Path) -> None:
    """A claimed file leaves new/ for claimed/<agent>/; a second agent finds nothing to take."""
    a, b = _source(tmp_path, "a"), _source(tmp_path, "b")
    _drop(a, "r1")
    [claim] = a.poll(5)
    assert claim.run.id == "r1" and Path(claim.handle) == a.mine / "r1.toml"
    assert b.poll(5) == [] and list(a.new.iterdir()) == []


def test_limit_and_order(tmp_path: Path) -> None:
    """poll(n) takes at most n files, oldest first; partial writes (not *.toml) are never taken."""
    import os

    source = _source(tmp_path)
    for i, name in enumerate(["c", "a", "b"]):
        _drop(source, name)
        os.utime(source.new / f"{name}.toml", (1000 + i, 1000 + i))
    (source.new / ".d.tmp").write_text("half a fi")
    assert [c.run.id for c in source.poll(2)] == ["c", "a"]
    assert [c.run.id for c in source.poll(5)] == ["b"]
    assert (source.new / ".d.tmp").exists()


def test_labels_route(tmp_path: Path) -> None:
    """A run is taken only when its labels are a subset of the agent's."""
    plain, gpu = _source(tmp_path, "plain"), _source(tmp_path, "gpu", ["gpu", "linux"])
    _drop(plain, "needs-gpu", 'image = "busybox"\nlabels = ["gpu"]\n')
    assert plain.poll(5) == [] and plain.poll(5) == []
    assert [c.run.id for c in gpu.poll(5)] == ["needs-gpu"]


def test_invalid_and_duplicate_files_go_to_failed(tmp_path: Path) -> None:
    """Invalid files and reused ids land in failed/ with a reason, never deleted."""
    source = _source(tmp_path)
    _drop(source, "bad", 'image = "busybox"\nnope = 1\n')
    _drop(source, "x1")
    [claim] = source.poll(5)
    source.report(claim, _result("x1"))
    _drop(source, "x1")
    assert source.poll(5) == []
    assert "nope: unknown key" in (source.failed / "bad.toml.error").read_text()
    assert "already claimed or done" in (source.failed / "x1.toml.error").read_text()
    assert (source.failed / "bad.toml").exists() and (source.failed / "x1.toml").exists()


def test_report_is_exactly_once(tmp_path: Path) -> None:
    """A second report of a run keeps the first result."""
    source = _source(tmp_path)
    _drop(source, "r")
    [claim] = source.poll(1)
    source.report(claim, _result("r", "failed", 3))
    source.report(claim, _result("r", "succeeded", 0))
    record = json.loads((source.done / "r.json").read_text())
    assert (record["outcome"], record["exit_code"], record["agent"]) == ("failed", 3, "a")
    assert (source.done / "r.toml").exists() and list(source.mine.iterdir()) == []


def _info(run_id: str, state: str = "running") -> ContainerInfo:
    return ContainerInfo("cid", f"dagent-{run_id}", run_id, "busybox", state, None, "", None, {"dagent.agent": "a"})


def test_recover_rules(tmp_path: Path) -> None:
    """After a crash: container → resume; no marker → resume (never ran); marker, no container → crashed."""
    source = _source(tmp_path)
    for name in ("with-container", "never-started", "vanished", "reported"):
        _drop(source, name)
    claims = {c.run.id: c for c in source.poll(10)}
    source.starting(claims["with-container"])
    source.starting(claims["vanished"])
    (source.done / "reported.json").write_text("{}")  # reported just before the crash
    resumed = source.recover({"with-container": _info("with-container")})
    assert sorted(c.run.id for c in resumed) == ["never-started", "with-container"]
    crashed = json.loads((source.done / "vanished.json").read_text())
    assert crashed["outcome"] == "crashed" and "not run again" in crashed["error"]
    assert (source.done / "reported.toml").exists()


def test_recovery_sweeps_markers_a_crash_left_behind_a_finished_run(tmp_path: Path) -> None:
    """Killed after the run file moved to done/ or failed/ but before its marker went: no marker stays."""
    source = _source(tmp_path)
    for name in ("archived", "refused", "running"):
        _drop(source, name)
    claims = {c.run.id: c for c in source.poll(10)}
    for claim in claims.values():
        source.starting(claim)
    # The crash's leftovers: the run file already moved on, its marker not yet removed.
    (source.done / "archived.json").write_text("{}")
    Path(claims["archived"].handle).rename(source.done / "archived.toml")
    Path(claims["refused"].handle).rename(source.failed / "refused.toml")
    # Killed between writing a report's temporary file and linking it: the run is still claimed.
    (source.done / ".running.4242.tmp").write_text("{}")
    (source.done / ".someone-elses.4242.tmp").write_text("{}")  # not this agent's to remove
    resumed = source.recover({"running": _info("running")})
    assert [c.run.id for c in resumed] == ["running"]
    assert sorted(p.name for p in source.mine.iterdir()) == ["running.started", "running.toml"]
    assert json.loads((source.done / "archived.json").read_text()) == {}  # reported once, not again
    assert sorted(p.name for p in source.done.glob(".*")) == [".someone-elses.4242.tmp"]


def test_cancel_before_start(tmp_path: Path) -> None:
    """cancel/<id> for a run still in new/ reports it cancelled without running it."""
    source = _source(tmp_path)
    _drop(source, "c")
    (source.cancel / "c").touch()
    assert source.poll(5) == []
    assert json.loads((source.done / "c.json").read_text())["outcome"] == "cancelled"
    assert source.cancellations(["c"]) == []


def test_unusable_inbox_is_a_source_error(tmp_path: Path) -> None:
    """An inbox path that is a file: one clear error."""
    from dagent.errors import SourceError

    (tmp_path / "inbox").write_text("not a directory")
    config = load_config({"inbox": {"path": str(tmp_path / "inbox")}}, environ={}).config
    with pytest.raises(SourceError, match=r"inbox\.path"):
        InboxSource(config).connect()


def test_systemd_unit_runs_a_valid_command() -> None:
    """examples/systemd/dagent.service starts `dagent start` with flags dagent accepts."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(REPO / "examples" / "systemd" / "dagent.service")
    for key in ("ExecStart", "ExecStartPre"):
        argv = shlex.split(unit["Service"][key])
        assert argv[0].endswith("/dagent")
        build_parser().parse_args(argv[1:])
    assert unit["Service"]["KillSignal"] == "SIGTERM" and unit["Service"]["RestartPreventExitStatus"] == "2"
    assert unit["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the agent reloads on SIGHUP
