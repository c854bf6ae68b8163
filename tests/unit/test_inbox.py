"""The inbox's rules on a real directory: claiming, routing, exactly-once reports, restart recovery."""

from __future__ import annotations

import configparser
import json
import os
import shlex
from pathlib import Path

import pytest

from dagent.cli import build_parser
from dagent.config import load_config
from dagent.contracts import ContainerInfo, RunResult
from dagent.sources.inbox import InboxSource
from tests.support import REPO


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
    for run_id in ("with-container", "vanished"):
        assert source.starting(claims[run_id])
        source.started(claims[run_id], "cid")
    (source.done / "reported.json").write_text("{}")  # reported just before the crash
    resumed = source.recover({"with-container": _info("with-container")})
    assert sorted(c.run.id for c in resumed) == ["never-started", "with-container"]
    crashed = json.loads((source.done / "vanished.json").read_text())
    assert crashed["outcome"] == "crashed" and "not run again" in crashed["error"]
    assert (source.done / "reported.toml").exists()


def test_a_kill_before_the_create_loses_no_run(tmp_path: Path) -> None:
    """Told it may start, then killed before the container was made: no marker, so the restart runs it."""
    source = _source(tmp_path)
    _drop(source, "k1")
    [claim] = source.poll(1)
    assert source.starting(claim)
    assert [c.run.id for c in source.recover({})] == ["k1"] and not (source.done / "k1.json").exists()


def test_recovery_sweeps_markers_a_crash_left_behind_a_finished_run(tmp_path: Path) -> None:
    """Killed after the run file moved to done/ or failed/ but before its marker went: no marker stays."""
    source = _source(tmp_path)
    for name in ("archived", "refused", "running"):
        _drop(source, name)
    claims = {c.run.id: c for c in source.poll(10)}
    for claim in claims.values():
        source.started(claim, "cid")
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


def _bad_entries(new: Path, elsewhere: Path) -> dict[str, str]:
    """Entries of new/ that are not run files to read, → what their reason must say."""
    os.symlink("loop.toml", new / "loop.toml")
    os.mkfifo(new / "fifo.toml")
    os.symlink("/dev/zero", new / "zero.toml")
    os.symlink(elsewhere / "missing.toml", new / "dangling.toml")
    (new / "dir.toml").mkdir()
    (new / "big.toml").write_text("# padding\n" * 120_000)
    (new / "latin1.toml").write_bytes(b'image = "caf\xe9"\n')
    (new / "deep.toml").write_text('image = "busybox"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    (new / "digits.toml").write_text('image = "busybox"\nx = ' + "1" * 5000 + "\n")
    (new / "line\nbreak.toml").write_text("not toml")
    return {
        "loop.toml": "loop of symbolic links",
        "fifo.toml": "not a regular file (a FIFO)",
        "zero.toml": "not a regular file (a character device)",
        "dangling.toml": "dangling symbolic link",
        "dir.toml": "not a regular file (a directory)",
        "big.toml": "larger than 1 MiB",
        "latin1.toml": "not UTF-8",
        "deep.toml": "RecursionError",
        "digits.toml": "digits",
        "line\nbreak.toml": "invalid TOML",
    }


def test_entries_that_are_not_run_files_move_aside_and_the_good_file_behind_them_runs(tmp_path: Path) -> None:
    """Attack first (issue 27): a symlink loop failed every listing, a FIFO blocked the poll for good,
    /dev/zero read until memory ran out, and parser errors other than TOMLDecodeError escaped."""
    source = _source(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    good = tmp_path / "elsewhere" / "good.toml"
    good.write_text('image = "busybox"\n')
    expected = _bad_entries(source.new, tmp_path / "elsewhere")
    os.symlink(good, source.new / "zz-linked.toml")  # a link to a regular file is still a run file
    _drop(source, "zz-good")
    claims = source.poll(10)
    assert sorted(c.run.id for c in claims) == ["zz-good", "zz-linked"]
    for name, reason in expected.items():
        assert os.path.lexists(source.failed / name), name
        error = (source.failed / (name + ".error")).read_text()
        assert reason in error, (name, error)
        assert error.count("\n") == 1, error  # one line, the file name escaped
    assert os.listdir(source.new) == []


def test_a_bad_file_already_in_failed_is_not_overwritten_by_a_link_of_the_same_name(tmp_path: Path) -> None:
    source = _source(tmp_path)
    os.symlink("loop.toml", source.failed / "loop.toml")  # a loop left in failed/ earlier
    os.symlink("loop.toml", source.new / "loop.toml")
    assert source.poll(1) == []
    assert os.path.lexists(source.failed / "loop.1.toml")


def test_max_file_size_is_configurable(tmp_path: Path) -> None:
    config = load_config({"name": "a", "inbox": {"path": str(tmp_path / "inbox"), "max_file_size": "2k"}},
                         environ={}).config  # fmt: skip
    source = InboxSource(config)
    source.connect()
    _drop(source, "r1", 'image = "busybox"\n' + "# x\n" * 1000)
    assert source.poll(1) == [] and "larger than 2048 bytes" in (source.failed / "r1.toml.error").read_text()


def test_an_entry_reaches_failed_only_with_its_error_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever watches failed/ for *.toml finds the .error already written, for a bad new/ file and a refused claim."""
    import dagent.durable

    source = _source(tmp_path)
    _drop(source, "bad", "nope = 1\n")
    _drop(source, "good")
    renamed = dagent.durable.rename
    seen: list[tuple[str, bool]] = []

    def watched(old: Path, new: Path) -> None:
        if new.parent == source.failed:
            seen.append((new.name, new.with_name(new.name + ".error").exists()))
        renamed(old, new)

    monkeypatch.setattr(dagent.durable, "rename", watched)
    [claim] = source.poll(5)
    source.refuse(claim, "refused by docker.allowed_volumes")
    assert seen == [("bad.toml", True), ("good.toml", True)]
    assert "refused by" in (source.failed / "good.toml.error").read_text()
    assert sorted(p.name for p in source.mine.iterdir()) == []


def test_two_entries_of_one_name_keep_their_own_error(tmp_path: Path) -> None:
    """A name already in failed/ (or its .error alone) is not overwritten: the next number is taken."""
    source = _source(tmp_path)
    (source.failed / "x.toml.error").write_text("left by an agent killed mid-move\n")
    _drop(source, "x", "nope = 1\n")
    source.poll(5)
    _drop(source, "x", "nope = 2\n")
    source.poll(5)
    assert sorted(p.name for p in source.failed.iterdir()) == [
        "x.1.toml", "x.1.toml.error", "x.2.toml", "x.2.toml.error", "x.toml.error"
    ]  # fmt: skip
    assert (source.failed / "x.1.toml").read_text() == "nope = 1\n" and "nope" in (
        source.failed / "x.2.toml.error"
    ).read_text()


def test_an_entry_caught_on_its_way_to_failed_is_judged_again(tmp_path: Path) -> None:
    """A kill between taking a bad file from new/ and its move leaves it hidden in claimed/; the next start puts it back."""
    source = _source(tmp_path)
    (source.mine / ".r1.toml.failing").write_text('image = "busybox"\n')
    source.recover({})
    assert (source.new / "r1.toml").exists() and list(source.mine.iterdir()) == []
    [claim] = source.poll(5)
    assert claim.run.id == "r1"


def test_an_entry_failed_cannot_take_goes_back_to_new_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """failed/ refusing the entry (a full disk, a read-only mount): it is left in new/, said once, and no
    .error is left behind without it."""
    import dagent.durable

    source = _source(tmp_path)
    _drop(source, "bad", "nope = 1\n")
    renamed = dagent.durable.rename

    def full(old: Path, new: Path) -> None:
        if new.parent == source.failed:
            raise OSError(28, "No space left on device")
        renamed(old, new)

    monkeypatch.setattr(dagent.durable, "rename", full)
    assert source.poll(5) == [] and source.poll(5) == []
    assert [p.name for p in source.new.iterdir()] == ["bad.toml"] and list(source.failed.iterdir()) == []
    assert [p.name for p in source.mine.iterdir()] == []
    said = [r.getMessage() for r in caplog.records if "cannot be moved" in r.getMessage()]
    assert len(said) == 1 and "No space left on device" in said[0]


def test_a_kill_after_an_entry_went_back_to_new_leaves_one_copy(tmp_path: Path) -> None:
    """Killed between putting a held entry back in new/ and removing it: the next start keeps the one in new/."""
    source = _source(tmp_path)
    _drop(source, "r1")
    os.link(source.new / "r1.toml", source.mine / ".r1.toml.failing")
    source.recover({})
    assert [p.name for p in source.new.iterdir()] == ["r1.toml"] and list(source.mine.iterdir()) == []
    assert list(source.failed.iterdir()) == []


def test_a_held_entry_that_cannot_go_back_is_moved_to_failed(tmp_path: Path) -> None:
    """A directory named like a run file, caught mid-move: a link cannot take it back, failed/ does."""
    source = _source(tmp_path)
    (source.mine / ".d.toml.failing").mkdir()
    source.recover({})
    assert (source.failed / "d.toml").is_dir() and "cannot go back to new/" in (
        source.failed / "d.toml.error"
    ).read_text()
    assert list(source.mine.iterdir()) == []


def test_a_symlink_held_mid_move_goes_back_as_a_symlink(tmp_path: Path) -> None:
    """The entry itself goes back, never a hard link to what a symlink points at."""
    source = _source(tmp_path)
    secret = tmp_path / "secret.toml"
    secret.write_text('image = "busybox"\n')
    (source.mine / ".s.toml.failing").symlink_to(secret)
    source.recover({})
    assert (source.new / "s.toml").is_symlink() and secret.stat().st_nlink == 1
