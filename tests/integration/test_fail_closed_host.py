"""Attacks on what the host lends a run, driven as a user drives dagent: named volumes whose options
mount host paths or devices, images named by ID past the registry allow-list, inbox entries that are
not regular files, run files that break the TOML parser, and secrets in `config show` and errors.
Each test asserts the fail-closed behaviour; the daemon is real and only 127.0.0.1 is talked to."""

from __future__ import annotations

import contextlib
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.support import infra
from tests.support.helpers import AgentProcess, Dagent, agent_config, drop, results

pytestmark = pytest.mark.integration

SETTLE = 30  # seconds a run file gets to reach done/ or failed/
# An agent that reads an endless file must fail alone, not take the machine's memory with it.
AGENT_MEMORY = 1 << 30
AGENT_ENV = {"MALLOC_ARENA_MAX": "2"}


def _wait(agent: AgentProcess, condition: Callable[[], bool], what: str) -> None:
    """Wait up to SETTLE seconds; on a timeout fail with the tail of the agent's log."""
    deadline = time.monotonic() + SETTLE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {SETTLE}s waiting for {what}; agent log: {agent.log[-1500:]}")
        time.sleep(0.1)


def _settled(inbox: Path, run_id: str) -> bool:
    return (inbox / "failed" / f"{run_id}.toml").exists() or (inbox / "done" / f"{run_id}.json").exists()


def _where(inbox: Path, run_id: str) -> str:
    """Where a run ended up, for a failure's message."""
    done = inbox / "done" / f"{run_id}.json"
    if done.exists():
        return f"done: {done.read_text()}"
    error = inbox / "failed" / f"{run_id}.toml.error"
    return f"failed: {error.read_text()}" if error.exists() else "nowhere"


def _refused(inbox: Path, run_id: str, agent: AgentProcess) -> str:
    """The .error text of a run that must be refused; fails if it ran instead."""
    _wait(agent, lambda: _settled(inbox, run_id), f"run {run_id} to be refused or run")
    error = inbox / "failed" / f"{run_id}.toml.error"
    assert error.exists(), f"run {run_id} was not refused ({_where(inbox, run_id)}); log: {agent.log[-1500:]}"
    return error.read_text()


# --- 1. named volumes whose options mount the host -------------------------------------------------


MakeVolume = Callable[[dict[str, str]], str]


@pytest.fixture
def volumes(engine: docker.DockerClient, dagent: Dagent) -> Iterator[MakeVolume]:
    """Create local-driver volumes with options; removed (after this agent's containers) at the end."""
    made: list[str] = []

    def create(options: dict[str, str]) -> str:
        name = f"dagent-it-vol-{uuid.uuid4().hex[:8]}"
        engine.volumes.create(name=name, driver="local", driver_opts=options)
        made.append(name)
        return name

    yield create
    for container in dagent.containers():
        container.remove(force=True)
    for name in made:
        with contextlib.suppress(docker.errors.NotFound):
            engine.volumes.get(name).remove(force=True)


def _volume_agent(dagent: Dagent, inbox: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(agent config, the one allowed host directory) for named-volume runs."""
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True, exist_ok=True)
    config = agent_config(
        dagent,
        inbox,
        keep_containers="always",  # a container made for a refused run would stay to be seen
        allow_named_volumes=True,
        allowed_host_paths=[str(allowed)],
    )
    return config, allowed


def _overlay(tmp_path: Path) -> dict[str, str]:
    upper, work = tmp_path / "overlay" / "upper", tmp_path / "overlay" / "work"
    upper.mkdir(parents=True)
    work.mkdir(parents=True)
    return {"type": "overlay", "o": f"lowerdir=/etc,upperdir={upper},workdir={work}", "device": "overlay"}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("rbind-etc", ["/etc", "docker.allowed_host_paths"]),
        ("overlay-etc", ["docker.allow_named_volumes", "type=overlay"]),
        ("ext4-device", ["type=ext4"]),
    ],
)
def test_named_volume_that_mounts_the_host_is_refused(
    dagent: Dagent, inbox: Path, image: str, tmp_path: Path, volumes: MakeVolume, case: str, expected: list[str]
) -> None:
    """A named volume whose options mount /etc (rbind, overlay) or a block device is refused before create."""
    options = {
        "rbind-etc": {"type": "none", "o": "rbind", "device": "/etc"},
        "overlay-etc": _overlay(tmp_path) if case == "overlay-etc" else {},
        "ext4-device": {"type": "ext4", "device": "/dev/sda1"},
    }[case]
    volume = volumes(options)
    config, _ = _volume_agent(dagent, inbox, tmp_path)
    run_id = f"vol-{case}"
    drop(inbox, run_id, image=image, command=["true"], volumes=[f"{volume}:/e:ro"])
    with AgentProcess(dagent, config) as agent:
        error = _refused(inbox, run_id, agent)
        agent.signal()
    for text in expected:
        assert text in error, error
    assert dagent.containers(run_id) == []


def test_a_volume_another_service_uses_is_refused_unless_listed(
    engine: docker.DockerClient, dagent: Dagent, inbox: Path, image: str, tmp_path: Path, volumes: MakeVolume
) -> None:
    """A plain volume that a container not of this agent uses (a database's data, say) is not lent to runs."""
    volume = volumes({})
    other = engine.containers.create(image, ["true"], volumes={volume: {"bind": "/data", "mode": "rw"}})
    try:
        config, _ = _volume_agent(dagent, inbox, tmp_path)
        drop(inbox, "vol-theirs", image=image, command=["true"], volumes=[f"{volume}:/v"])
        with AgentProcess(dagent, config) as agent:
            error = _refused(inbox, "vol-theirs", agent)
            agent.signal()
        assert "docker.allowed_volumes" in error and other.name in error, error
    finally:
        other.remove(force=True)


def test_named_volumes_without_host_options_or_inside_an_allowed_root_run(
    dagent: Dagent, inbox: Path, image: str, tmp_path: Path, volumes: MakeVolume
) -> None:
    """Control: a plain volume and a bind volume of a directory inside docker.allowed_host_paths run."""
    config, allowed = _volume_agent(dagent, inbox, tmp_path)
    plain = volumes({})
    bound = volumes({"type": "none", "o": "bind", "device": str(allowed / "data")})
    drop(inbox, "vol-plain", image=image, command=["true"], volumes=[f"{plain}:/e:ro"])
    drop(inbox, "vol-bound", image=image, command=["true"], volumes=[f"{bound}:/e:ro"])
    with AgentProcess(dagent, config) as agent:
        _wait(agent, lambda: _settled(inbox, "vol-plain") and _settled(inbox, "vol-bound"), "both volume runs")
        agent.signal()
    done = results(inbox)
    for run_id in ("vol-plain", "vol-bound"):
        assert run_id in done, _where(inbox, run_id)
        assert done[run_id]["exit_code"] == 0, done[run_id]


# --- 2. images named by ID past docker.registry_allow_list -----------------------------------------


MakeImage = Callable[[str | None], str]


@pytest.fixture
def images(engine: docker.DockerClient, dagent: Dagent, image: str) -> Iterator[MakeImage]:
    """Commit a fresh image from the test image with exactly one name (or none); its full ID.

    Removed at the end, after this agent's containers."""
    made: list[str] = []

    def commit(name: str | None) -> str:
        container = engine.containers.create(image, ["true"])
        try:
            if name is None:
                made_image = container.commit()
            else:
                repository, tag = name.rsplit(":", 1)
                made_image = container.commit(repository=repository, tag=tag)
        finally:
            container.remove(force=True)
        image_id = str(made_image.id)
        made.append(image_id)
        assert engine.images.get(image_id).tags == ([name] if name else [])
        return image_id

    yield commit
    for container in dagent.containers():
        container.remove(force=True)
    for image_id in made:
        with contextlib.suppress(docker.errors.NotFound):
            engine.images.remove(image_id, force=True)


def _allow_list_agent(dagent: Dagent, inbox: Path, registry: infra.Registry) -> Path:
    return agent_config(dagent, inbox, keep_containers="always", registry_allow_list=[registry.address], pull="never")


def test_image_by_id_whose_names_are_all_outside_the_allow_list_is_refused(
    dagent: Dagent, inbox: Path, registry: infra.Registry, images: MakeImage
) -> None:
    """An image known only as 127.0.0.1:1/evil:1, named by its short ID or its full sha256 ID, is refused."""
    full = images("127.0.0.1:1/evil:1")
    short = full.removeprefix("sha256:")[:12]
    drop(inbox, "id-short", image=short, command=["true"])
    drop(inbox, "id-full", image=full, command=["true"])
    with AgentProcess(dagent, _allow_list_agent(dagent, inbox, registry)) as agent:
        errors = {run_id: _refused(inbox, run_id, agent) for run_id in ("id-short", "id-full")}
        agent.signal()
    for run_id, error in errors.items():
        assert "docker.registry_allow_list" in error and "named by ID" in error, error
        assert dagent.containers(run_id) == []


def test_image_by_id_named_inside_the_allow_list_runs(
    dagent: Dagent, inbox: Path, registry: infra.Registry, images: MakeImage
) -> None:
    """Control: an image whose only name is in the allowed registry runs when named by its short ID."""
    short = images(f"{registry.address}/ok:1").removeprefix("sha256:")[:12]
    drop(inbox, "id-ok", image=short, command=["true"])
    with AgentProcess(dagent, _allow_list_agent(dagent, inbox, registry)) as agent:
        _wait(agent, lambda: _settled(inbox, "id-ok"), "the run of the allowed image")
        agent.signal()
    assert results(inbox).get("id-ok", {}).get("exit_code") == 0, _where(inbox, "id-ok")


def test_image_by_id_with_no_name_is_refused(
    dagent: Dagent, inbox: Path, registry: infra.Registry, images: MakeImage
) -> None:
    """A dangling image (no name at all) named by ID has no registry to allow: refused."""
    short = images(None).removeprefix("sha256:")[:12]
    drop(inbox, "id-dangling", image=short, command=["true"])
    with AgentProcess(dagent, _allow_list_agent(dagent, inbox, registry)) as agent:
        error = _refused(inbox, "id-dangling", agent)
        agent.signal()
    assert "named by ID" in error, error
    assert dagent.containers("id-dangling") == []


# --- 3. inbox entries that are not regular files --------------------------------------------------


def _good_text(run_id: str, image: str) -> str:
    return f'id = "{run_id}"\nimage = "{image}"\ncommand = ["true"]\n'


def _place(new: Path, name: str, data: bytes) -> None:
    """Write a file the way writers must: a temp name, then a rename into new/."""
    tmp = new / f".{name}.tmp"
    tmp.write_bytes(data)
    tmp.rename(new / name)


def _loop(new: Path, elsewhere: Path, image: str) -> None:
    os.symlink("loop.toml", new / "loop.toml")


def _fifo(new: Path, elsewhere: Path, image: str) -> None:
    os.mkfifo(new / "fifo.toml")


def _zero(new: Path, elsewhere: Path, image: str) -> None:
    os.symlink("/dev/zero", new / "zero.toml")


def _big(new: Path, elsewhere: Path, image: str) -> None:
    # Valid but for its size: only the 1 MiB limit can refuse it.
    _place(new, "big.toml", (_good_text("big", image) + "# comment\n" * (2 * 2**20 // 10)).encode())


def _latin1(new: Path, elsewhere: Path, image: str) -> None:
    _place(new, "latin1.toml", _good_text("latin1", image).encode() + b"# caf\xe9\n")


def _linked(new: Path, elsewhere: Path, image: str) -> None:
    target = elsewhere / "linked.toml"
    target.write_text(_good_text("linked", image))
    os.symlink(target, new / "linked.toml")


# (make the entry, its name in new/, any of which the .error must hold; None: it must run)
ENTRIES: dict[str, tuple[Callable[[Path, Path, str], None], str, tuple[str, ...] | None]] = {
    "symlink-loop": (_loop, "loop.toml", ()),
    "fifo": (_fifo, "fifo.toml", ()),
    "symlink-to-dev-zero": (_zero, "zero.toml", ("regular file",)),
    "over-1-MiB": (_big, "big.toml", ("1 MiB", "1048576")),
    "not-utf8": (_latin1, "latin1.toml", ()),
    "symlink-to-a-run-file": (_linked, "linked.toml", None),
}


@pytest.mark.parametrize("case", list(ENTRIES))
def test_inbox_entry_that_is_not_a_regular_file(dagent: Dagent, inbox: Path, image: str, case: str) -> None:
    """Each odd entry in new/ goes to failed/ with its reason without blocking the poll; the good run
    behind it runs and the agent lives on. A symlink to a good run file still runs."""
    make, name, reason = ENTRIES[case]
    new, elsewhere = inbox / "new", dagent.workdir / "elsewhere"
    elsewhere.mkdir()
    config = agent_config(dagent, inbox, keep_containers="never")
    with AgentProcess(dagent, config, env=AGENT_ENV) as agent:
        # Capped before anything endless is in the inbox (the agent takes a second to import).
        resource.prlimit(agent.process.pid, resource.RLIMIT_AS, (AGENT_MEMORY, AGENT_MEMORY))
        make(new, elsewhere, image)
        drop(inbox, "zz-good", image=image, command=["true"])
        wanted = {"zz-good"} if reason is not None else {"zz-good", "linked"}
        _wait(agent, lambda: wanted <= set(results(inbox)), f"the good run behind {name}")
        alive = agent.process.poll() is None
        log = agent.log
        agent.signal()
    assert alive, log[-1500:]
    assert results(inbox)["zz-good"]["exit_code"] == 0
    if reason is None:
        assert results(inbox).get("linked", {}).get("exit_code") == 0, _where(inbox, "linked")
        return
    failed = inbox / "failed" / name
    assert os.path.lexists(failed), f"{name} not in failed/ (done/: {sorted(results(inbox))})"
    if case.startswith("symlink"):
        assert failed.is_symlink()
    error = (inbox / "failed" / f"{name}.error").read_text()
    assert not reason or any(text in error for text in reason), error
    assert not os.path.lexists(new / name)


# --- 4. run files that break the TOML parser ------------------------------------------------------


BREAKERS = {
    "deep-array": "x = " + "[" * 5000 + "]" * 5000 + "\n",
    "long-integer": "cpus = 1\nx = " + "1" * 5000 + "\n",
}


def _breaker(image: str, case: str) -> str:
    return f'id = "{case}"\nimage = "{image}"\n' + BREAKERS[case]


@pytest.mark.parametrize("case", list(BREAKERS))
def test_plan_of_a_run_file_that_breaks_the_toml_parser(dagent: Dagent, image: str, case: str) -> None:
    """`dagent plan` exits 2 with one line on stderr naming the file, and no traceback."""
    run_file = dagent.workdir / f"{case}.toml"
    run_file.write_text(_breaker(image, case))
    planned = dagent("plan", str(run_file), "-c", str(dagent.config()), timeout=60)
    lines = [line for line in planned.stderr.splitlines() if line.strip()]
    assert planned.returncode == 2, planned.stderr[-1500:]
    assert "Traceback" not in planned.stderr
    assert len(lines) == 1 and run_file.name in lines[0], planned.stderr[-1500:]


@pytest.mark.parametrize("case", list(BREAKERS))
def test_inbox_run_file_that_breaks_the_toml_parser(dagent: Dagent, inbox: Path, image: str, case: str) -> None:
    """The inbox moves the file to failed/ with its reason and runs the good file behind it."""
    _place(inbox / "new", f"{case}.toml", _breaker(image, case).encode())
    drop(inbox, "zz-good", image=image, command=["true"])
    with AgentProcess(dagent, agent_config(dagent, inbox, keep_containers="never")) as agent:
        _wait(agent, lambda: "zz-good" in results(inbox), f"the good run behind {case}.toml")
        alive = agent.process.poll() is None
        agent.signal()
    assert alive
    assert (inbox / "failed" / f"{case}.toml").exists() and (inbox / "failed" / f"{case}.toml.error").exists()
    assert results(inbox)["zz-good"]["exit_code"] == 0


# --- 5. secrets in `config show` and in errors ----------------------------------------------------


def test_config_show_hides_registry_passwords(dagent: Dagent) -> None:
    """`config show` of a [[docker.registry_auth]] entry works and never prints its password."""
    password = "hunter2-registry-pw"
    config = dagent.config(
        f'[[docker.registry_auth]]\nregistry = "127.0.0.1:5000"\nusername = "ci"\npassword = "{password}"\n'
    )
    shown = dagent("config", "show", "-c", str(config))
    assert shown.returncode == 0, shown.stderr[-1500:]
    assert password not in shown.stdout + shown.stderr


@pytest.mark.parametrize("command", ["config show", "config validate", "start"])
def test_credentials_in_the_api_url_are_refused_unprinted(dagent: Dagent, command: str) -> None:
    """api.url with user:password@ is a config error (exit 2) and the password is printed nowhere."""
    # `start` would connect: its URL points at a closed port on 127.0.0.1, never elsewhere.
    host = f"127.0.0.1:{infra.free_port()}" if command == "start" else "example.invalid"
    config = dagent.config(
        f'source = "prefect"\n[api]\nurl = "https://user:s3cretpw@{host}/api"\n[retry]\nattempts = 1\n'
    )
    done = dagent(*command.split(), "-c", str(config), timeout=60)
    assert "s3cretpw" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-1500:]
    assert done.returncode == 2, done.stderr[-1500:]
    assert "Traceback" not in done.stderr
