"""The embedded local inbox: a directory of run files, claimed by atomic rename."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from dagent import durable
from dagent.config import AgentConfig
from dagent.contracts import Claim, ContainerInfo, RunResult, owned_by
from dagent.errors import RunFileError, SourceError, one_line
from dagent.runs import load_run_file, shown_path
from dagent.spec import Origin

log = logging.getLogger("dagent.inbox")

SUBDIRS = ("new", "claimed", "done", "failed", "cancel")


class InboxSource:
    """new/ → claimed/<agent>/ → done/ (or failed/); cancel/<id> asks for a stop.

    Claiming is `rename(2)` out of new/, so of several agents on one inbox exactly one wins each
    file. A marker `claimed/<agent>/<id>.started` is written once the run's container exists (it is
    removed only after the marker): after a crash, a claimed run with neither container nor marker
    never ran and is run; one with a marker but no container is reported crashed, never run twice.
    """

    name = "inbox"

    def __init__(self, config: AgentConfig) -> None:
        self.root = config.inbox.path
        self.max_size = config.inbox.max_file_size
        self.agent = config.name
        self.labels = frozenset(config.labels)
        self.new, self.done, self.failed, self.cancel = (self.root / d for d in ("new", "done", "failed", "cancel"))
        self.mine = self.root / "claimed" / self.agent
        # new/ files left for agents with other labels, by mtime, so they are not re-read every poll.
        self._left: dict[str, float] = {}

    def reconfigure(self, config: AgentConfig) -> None:
        """A reload's live keys: labels (the inbox's path takes a restart)."""
        if frozenset(config.labels) != self.labels:
            self.labels = frozenset(config.labels)
            self._left.clear()  # files left for want of a label are worth another look

    def connect(self) -> None:
        """Create the layout; SourceError if the directory is not usable."""
        try:
            for path in (self.new, self.done, self.failed, self.cancel, self.mine):
                path.mkdir(parents=True, exist_ok=True)
            probe = self.mine / ".probe"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise SourceError(f"inbox.path {self.root}: cannot use it: {e.strerror}") from None

    def recover(self, containers: Mapping[str, ContainerInfo], live: Collection[str] = ()) -> Sequence[Claim]:
        """Claimed runs of this agent that must go on; crashed ones are reported here."""
        self._sweep()
        claims = []
        for path in sorted(self.mine.glob("*.toml")):
            try:
                run = load_run_file(path, self.max_size)
            except Exception as e:  # any entry's failure is that entry's: never the start's
                self._move_to_failed(path, _why(path, e))
                continue
            claim = Claim(run=run, origin=Origin(source=self.name), handle=path)
            if (self.done / f"{run.id}.json").exists():
                self._archive(claim)  # reported before the crash; finish the move
            elif owned_by(containers.get(run.id), self.agent) or not self._marker(run.id).exists():
                claims.append(claim)  # adopt its container, or it never started
            else:
                self.report(
                    claim,
                    RunResult.crashed(
                        run.id, "the agent stopped after starting this run and its container is gone; not run again"
                    ),
                )  # fmt: skip
        return claims

    def poll(self, limit: int) -> Sequence[Claim]:
        """Claim up to `limit` runs from new/, oldest first, whose labels this agent has.

        Every entry is its own problem: one that cannot be read (a loop, a FIFO, a device, too big,
        not UTF-8, not TOML) is moved to failed/ with why, and the poll goes on to the next.
        """
        claims: list[Claim] = []
        for path in self._entries():
            if len(claims) >= limit:
                break
            try:
                claim = self._try_claim(path)
            except FileNotFoundError:
                continue  # another agent took it meanwhile
            except Exception as e:
                self._move_to_failed(path, _why(path, e))
                continue
            if claim is not None:
                claims.append(claim)
        return claims

    def _entries(self) -> list[Path]:
        """new/*.toml, oldest first by the entry itself (lstat: a link's target is not looked at here)."""
        found: list[tuple[float, str, Path]] = []
        try:
            with os.scandir(self.new) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.name.endswith(".toml"):
                        continue
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue  # gone meanwhile
                    found.append((mtime, entry.name, Path(entry.path)))
        except OSError as e:
            raise SourceError(f"inbox {self.new}: cannot list: {e.strerror}") from None
        return [path for _, _, path in sorted(found)]

    def _try_claim(self, path: Path) -> Claim | None:
        mtime = path.lstat().st_mtime
        if self._left.get(path.name) == mtime:
            return None
        try:
            run = load_run_file(path, self.max_size)
        except RunFileError as e:
            self._move_to_failed(path, str(e))
            return None
        if not set(run.labels) <= self.labels:
            self._left[path.name] = mtime
            log.debug("leaving %s: needs labels %s", shown_path(path.name), sorted(set(run.labels) - self.labels))
            return None
        target = self.mine / f"{run.id}.toml"
        if target.exists() or (self.done / f"{run.id}.json").exists():
            self._move_to_failed(
                path, f"{shown_path(path)}: id: run id {run.id!r} is already claimed or done; ids must be unique"
            )
            return None
        durable.rename(path, target)  # the claim: exactly one agent's rename succeeds
        self._left.pop(path.name, None)
        claim = Claim(run=run, origin=Origin(source=self.name), handle=target)
        log.info("claimed run %s (%s)", run.id, shown_path(path.name))
        if (self.cancel / run.id).exists():
            self.report(claim, RunResult.not_started(run.id, "cancelled", "cancelled before it started"))
            return None
        return claim

    def starting(self, claim: Claim) -> bool:
        """False when cancel/<id> asks for a stop before the start."""
        return not (self.cancel / claim.run.id).exists()

    def started(self, claim: Claim, container_id: str) -> None:
        """Mark the run as started, its container now made (see the class docstring).

        Not before the create: a kill between a marker and a create that never came would leave a
        marker and no container, read at the restart as a run that ran, and the run would be lost.
        """
        durable.touch(self._marker(claim.run.id))

    def report(self, claim: Claim, result: RunResult) -> None:
        """Write done/<id>.json once, then move the run file next to it."""
        record = {
            "id": result.run_id,
            "agent": self.agent,
            **{k: v for k, v in asdict(result).items() if k != "run_id"},
        }
        target = self.done / f"{result.run_id}.json"
        tmp = self.done / f".{result.run_id}.{os.getpid()}.tmp"
        durable.write(tmp, json.dumps(record, indent=2) + "\n")
        try:
            durable.link(tmp, target)  # fails if a result exists: a run is reported exactly once
        except FileExistsError:
            log.warning("run %s: already reported; keeping the first result", result.run_id)
        finally:
            tmp.unlink()
        self._archive(claim)

    def refuse(self, claim: Claim, reason: str) -> None:
        """Move a claimed run that may not run to failed/ with the reason."""
        self._move_to_failed(Path(claim.handle), reason, quiet=True)  # the agent logged why
        self._marker(claim.run.id).unlink(missing_ok=True)

    def cancellations(self, run_ids: Sequence[str]) -> Sequence[str]:
        """Runs in flight with a cancel/<id> file."""
        return [run_id for run_id in run_ids if (self.cancel / run_id).exists()]

    def watch(self, wake: Callable[[], None]) -> None:
        """Polling a directory every second is cheap enough; no watcher."""

    def heartbeat(self) -> None:
        """The inbox has no one to tell."""

    def log(self, claim: Claim, level: str, message: str) -> None:
        """The inbox keeps no logs of its own; the agent's log has them."""

    def close(self) -> None:
        """Nothing to release."""

    # --- helpers ---------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove what a kill -9 left between the steps of a report or a refusal."""
        for marker in self.mine.glob("*.started"):
            if not marker.with_suffix(".toml").exists():
                # Its run file had moved to done/ or failed/ when the agent was killed: finished.
                marker.unlink(missing_ok=True)
        for held in self.mine.glob(".*.failing"):
            # Taken from new/ on its way to failed/ when the agent was killed: judged again.
            original = self.new / held.name[1 : -len(".failing")]
            try:
                if _same_entry(held, original):  # killed between putting it back and removing this
                    held.unlink()
                    continue
                durable.link(held, original)
                held.unlink()
            except FileExistsError:
                self._move_to_failed(held, f"{shown_path(original.name)}: a new file took its name in new/ "
                                           "while it moved to failed/")  # fmt: skip
            except OSError as e:
                self._move_to_failed(held, f"{shown_path(original.name)}: cannot go back to new/: {e.strerror}")
        # A report's temporary file is removed before its run file leaves claimed/, so only runs
        # still claimed here can have one; other agents' are theirs to sweep.
        ours = {path.stem for path in self.mine.glob("*.toml")}
        for tmp in self.done.glob(".*.tmp"):
            if tmp.name[1:].rsplit(".", 2)[0] in ours:
                tmp.unlink(missing_ok=True)

    def _marker(self, run_id: str) -> Path:
        return self.mine / f"{run_id}.started"

    def _archive(self, claim: Claim) -> None:
        run_id = claim.run.id
        with contextlib.suppress(FileNotFoundError):
            durable.rename(Path(claim.handle), self.done / f"{run_id}.toml")
        self._marker(run_id).unlink(missing_ok=True)
        (self.cancel / run_id).unlink(missing_ok=True)

    def _move_to_failed(self, path: Path, reason: str, quiet: bool = False) -> None:
        """Move an entry to failed/ with its `.error` written first: a watcher of failed/*.toml never finds an
        entry there without it (a `.error` alone may be seen for a moment, or for good after a kill)."""
        name = path.name.removeprefix(".").removesuffix(".failing") if path.name.endswith(".failing") else path.name
        held = path
        if path.parent != self.mine:
            # new/ is shared: take the entry into claimed/<agent>/ first (one agent's rename wins),
            # hidden and not *.toml, so the .error can be written before the entry appears in failed/.
            held = self.mine / f".{path.name}.failing"
            try:
                durable.rename(path, held)
            except FileNotFoundError:
                return  # another agent took it
            except OSError as e:
                self._cannot_move(path, reason, e)
                return
        try:
            target = self._reserve_failed(name, reason)
        except OSError as e:
            self._put_back(held, path)
            self._cannot_move(path, reason, e)
            return
        try:
            durable.rename(held, target)
        except OSError as e:
            target.with_name(target.name + ".error").unlink(missing_ok=True)
            self._put_back(held, path)
            self._cannot_move(path, reason, e)
            return
        if not quiet:
            for line in reason.splitlines() or [f"{name} is invalid"]:
                log.error("%s", line)

    def _cannot_move(self, path: Path, reason: str, error: OSError) -> None:
        """Left where it is, and not read again until it changes: one line, not one per poll."""
        with contextlib.suppress(OSError):
            self._left[path.name] = path.lstat().st_mtime
        log.error("%s; and it cannot be moved to %s: %s", reason.splitlines()[0], self.failed, error.strerror)

    def _put_back(self, held: Path, path: Path) -> None:
        """An entry taken from new/ goes back there (never over a newer file of its name: then the next start does)."""
        if held == path:
            return
        with contextlib.suppress(OSError):
            durable.link(held, path)
            held.unlink()

    def _reserve_failed(self, name: str, reason: str) -> Path:
        """A free name in failed/, claimed by creating its `.error` exclusively (agents may share the inbox)."""
        stem, suffix = os.path.splitext(name)
        n = 0
        while True:
            target = self.failed / (name if n == 0 else f"{stem}.{n}{suffix}")
            n += 1
            if os.path.lexists(target):  # the entry itself: a link in failed/ may point anywhere, or loop
                continue
            error = target.with_name(target.name + ".error")
            try:
                fd = os.open(error, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(reason + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                error.unlink(missing_ok=True)  # a full disk, say: no half-written reason left behind
                raise
            return target


def _same_entry(a: Path, b: Path) -> bool:
    """Whether two paths are links to one inode (the entries themselves: a symlink is not followed)."""
    try:
        x, y = a.lstat(), b.lstat()
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def _why(path: Path, error: BaseException) -> str:
    """An entry's failure as its one reason line, naming the file."""
    if isinstance(error, RunFileError):
        return str(error)
    return f"{shown_path(path)}: cannot be taken: {type(error).__name__}: {one_line(error)}"
