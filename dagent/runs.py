"""RunRequest: the typed, source-independent description of one run, and loading it from a TOML file."""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from dagent._compat import tomllib
from dagent.config import EnvName, Volume, check_device, describe_error
from dagent.errors import RunFileError, one_line
from dagent.images import parse_image
from dagent.units import MAX_CPUS, MAX_GPUS, MAX_SECONDS, MIN_CPUS, MIN_MEMORY, parse_bytes

# Container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]; "dagent-[<agent>-]" plus the id must stay one.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PORT_RE = re.compile(
    r"(?:(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>[0-9]{1,5}):)?(?P<ctr>[0-9]{1,5})(?:/(?P<proto>tcp|udp|sctp))?"
)


def _check_run_id(value: str) -> str:
    if not RUN_ID_RE.fullmatch(value):
        raise ValueError(f"run id {value!r} must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most 100 characters)")
    return value


def _check_image(value: str) -> str:
    parse_image(value)
    return value


def _split_command(value: Any) -> Any:
    """A command given as one string is split as a shell would, without running a shell."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"cannot split {value!r}: {e}") from None
    return value


def _check_abs(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def _check_port(value: str) -> str:
    match = PORT_RE.fullmatch(value)
    if not match or any(int(p) > 65535 or int(p) == 0 for p in (match["host"], match["ctr"]) if p):
        raise ValueError(f"port {value!r} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp] or CONTAINER_PORT")
    return value


def _check_gpus(value: Any) -> Any:
    # One clear message instead of one per branch of the union.
    if value is None or value == "all":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_GPUS:
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise ValueError(f'must be "all" or a count from 1 to {MAX_GPUS} (got {shown})')


def _nul_paths(value: object, path: str = "") -> Iterator[str]:
    """Key paths of every string (key or value) holding a NUL byte, which no OS call accepts."""
    if isinstance(value, str):
        if "\0" in value:
            yield path or "(run)"
    elif isinstance(value, dict):
        for key, item in value.items():
            shown = key if isinstance(key, str) and key.isprintable() and key.strip() == key and key else repr(key)
            where = f"{path}.{shown}" if path else shown
            if isinstance(key, str) and "\0" in key:
                yield where
            yield from _nul_paths(item, where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _nul_paths(item, f"{path}.{index}")


Command = Annotated[tuple[str, ...], BeforeValidator(_split_command)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]


def _swap(value: Any) -> Any:
    """-1 (unlimited swap) or a size."""
    if value in (-1, "-1"):
        return -1
    return parse_bytes(value)


# The daemon runs a health check's command itself, in the container, each interval: a 1 ms interval
# spends the daemon's CPU, which no run's cpus limit bounds. 0 is Docker's default (30 s).
MIN_HEALTHCHECK_INTERVAL_NS = 1_000_000_000


def _check_interval(value: int | None) -> int | None:
    if value is not None and 0 < value < MIN_HEALTHCHECK_INTERVAL_NS:
        raise ValueError(f"{value} ns is under 1 s (1000000000 ns); the daemon runs each check itself")
    return value


class Healthcheck(BaseModel):
    """A container health check (docker-py's `healthcheck`; durations in nanoseconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test: list[str] | str
    interval: Annotated[int | None, AfterValidator(_check_interval)] = Field(default=None, ge=0, le=2**63 - 1)
    timeout: int | None = Field(default=None, ge=0, le=2**63 - 1)
    retries: int | None = Field(default=None, ge=0, le=1000)
    start_period: int | None = Field(default=None, ge=0, le=2**63 - 1)


class Ulimit(BaseModel):
    """One resource limit, as Docker's --ulimit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z]+$")
    soft: int = Field(ge=-1, le=2**63 - 1)
    hard: int = Field(ge=-1, le=2**63 - 1)


Memory = Annotated[int, BeforeValidator(parse_bytes), Field(ge=MIN_MEMORY)]


class LogConfig(BaseModel):
    """A container's log driver and its options (docker-py's `log_config`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(pattern=r"^[a-z0-9][a-z0-9_.:/-]{0,63}$")
    config: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=1024)]] = {}


class RunRequest(BaseModel):
    """One run: what to start, with what, and what it may use."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: Annotated[str, AfterValidator(_check_run_id)]
    """Run id; the container is named `dagent-<id>`. Defaults to the run file's name."""
    image: Annotated[str, AfterValidator(_check_image)]
    """Image reference, e.g. local/busybox:latest or 127.0.0.1:5000/flows/etl:1."""
    command: Command | None = None
    """Command, as a list or one string split like a shell would; unset uses the image's."""
    entrypoint: Command | None = None
    """Entrypoint; unset uses the image's."""
    env: dict[EnvName, str] = {}
    """Environment variables for this run."""
    labels: tuple[str, ...] = ()
    """Labels the agent must have to take this run."""
    volumes: tuple[Volume, ...] = ()
    """Mounts `SRC:DST[:ro|rw]`; host paths only under the agent's docker.allowed_host_paths."""
    network: str | None = Field(default=None, min_length=1)
    """Docker network (one of docker.allowed_networks when set), or "host" (needs docker.allow_host_network)."""
    cpus: float | None = Field(default=None, ge=MIN_CPUS, le=MAX_CPUS)
    """CPUs, e.g. 1.5 (at least 0.01, Docker's minimum)."""
    memory: Memory | None = None
    """Memory limit, e.g. 512m (at least 6m, Docker's minimum)."""
    shm_size: Bytes | None = None
    """Size of /dev/shm, e.g. 1g (within the memory limit)."""
    gpus: Annotated[Literal["all"] | int | None, BeforeValidator(_check_gpus)] = None
    """GPUs: "all" or a count (needs docker.allow_gpus)."""
    devices: tuple[Annotated[str, AfterValidator(check_device)], ...] = ()
    """Host devices HOST[:CONTAINER[:rwm]] (each must be in docker.allowed_devices)."""
    ports: tuple[Annotated[str, AfterValidator(_check_port)], ...] = ()
    """Published ports [HOST_IP:]HOST_PORT:CONTAINER_PORT[/proto] (needs docker.allow_ports)."""
    timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    """Seconds before the run is stopped and reported timed-out; unset uses docker.run_timeout."""
    working_dir: Annotated[str, AfterValidator(_check_abs)] | None = None
    """Working directory inside the container."""
    user: str | None = Field(default=None, min_length=1)
    """User (name or uid[:gid]) to run as."""
    privileged: bool = False
    """Privileged container (needs docker.allow_privileged)."""
    cap_add: tuple[str, ...] = ()
    """Capabilities to add (each must be in docker.allowed_capabilities)."""
    pid: Literal["host"] | None = None
    """"host" shares the host's PID namespace (needs docker.allow_host_network)."""
    ipc: Literal["host", "private", "shareable"] | None = None
    """IPC mode; "host" needs docker.allow_host_network."""
    pull: Literal["if-not-present", "always", "never"] | None = None
    """When to pull the image; unset uses docker.pull (each must be in docker.allowed_pull_policies)."""
    memory_swap: Annotated[int, BeforeValidator(_swap)] | None = None
    """Memory plus swap, e.g. 1g (at least `memory`), or -1 for unlimited swap; unset is Docker's (twice `memory`)."""
    networks: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    """More Docker networks to join after `network` (each judged as `network` is)."""
    init: bool | None = None
    """Run an init process (tini) as PID 1."""
    hostname: str | None = Field(default=None, min_length=1, max_length=253)
    """The container's host name."""
    extra_hosts: dict[Annotated[str, Field(min_length=1)], str] = {}
    """More /etc/hosts entries, name = address."""
    dns: tuple[str, ...] = ()
    """DNS servers."""
    ulimits: tuple[Ulimit, ...] = ()
    """Resource limits, e.g. {name = "nofile", soft = 1024, hard = 2048}."""
    stop_signal: str | None = Field(default=None, min_length=1)
    """The signal that stops the container (e.g. SIGINT); unset is the image's."""
    healthcheck: Healthcheck | None = None
    """A health check, as docker-py takes it: test, interval, timeout, retries, start_period (nanoseconds)."""
    tmpfs: dict[Annotated[str, AfterValidator(_check_abs)], str] = {}
    """tmpfs mounts, path = options (e.g. "size=64m"); with docker.max_memory each needs a size within it."""
    keep: Literal["never", "on-failure", "always"] | None = None
    """Which finished container to keep for this run; unset uses docker.keep_containers."""
    dns_search: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = ()
    """DNS search domains."""
    dns_opt: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = ()
    """DNS resolver options (ndots:2, ...)."""
    domainname: str | None = Field(default=None, min_length=1, max_length=253)
    """The container's domain name."""
    tty: bool | None = None
    """Give the container a terminal."""
    read_only: bool | None = None
    """Mount the container's root filesystem read-only."""
    cap_drop: tuple[Annotated[str, Field(min_length=1, max_length=40)], ...] = ()
    """Capabilities to drop (grants nothing)."""
    mem_reservation: Memory | None = None
    """Soft memory limit, e.g. 256m (within the memory limit and docker.max_memory)."""
    pids_limit: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    """Most processes and threads at once; 0 or -1 is unlimited (refused while docker.max_pids is set)."""
    log_config: LogConfig | None = None
    """The container's log driver, as docker-py takes it: type and config (json-file and local, else
    docker.allowed_log_drivers)."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        found = list(_nul_paths(data))
        if found:
            raise ValueError(f"{found[0]}: holds a NUL byte")
        return data


# The largest run file read unless inbox.max_file_size says otherwise: a run file is a page of TOML.
MAX_RUN_FILE = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def shown_path(path: str | Path) -> str:
    """A file name fit for one log line: escaped when it holds a newline or another unprintable character."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def read_run_file(path: str | Path, max_size: int = MAX_RUN_FILE) -> str:
    """A run file's text: a regular file (or a symbolic link to one), opened without blocking, at most
    `max_size` bytes of UTF-8. RunFileError naming the file for anything else (a loop, a FIFO, a device)."""
    shown = shown_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        why = {errno.ELOOP: "a loop of symbolic links", errno.ENOENT: "missing (or a dangling symbolic link)"}
        raise RunFileError(f"{shown}: cannot read: {why.get(e.errno or 0, e.strerror)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a file")
            raise RunFileError(f"{shown}: not a regular file ({kind})")
        data = os.read(fd, max_size + 1)
        while len(data) <= max_size and (more := os.read(fd, max_size + 1 - len(data))):
            data += more
    except OSError as e:
        raise RunFileError(f"{shown}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise RunFileError(f"{shown}: larger than {_size(max_size)} (inbox.max_file_size)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunFileError(f"{shown}: not UTF-8 text") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def load_run_file(path: str | Path, max_size: int = MAX_RUN_FILE) -> RunRequest:
    """Load and validate a run file (host paths are resolved later, when judged). Raises RunFileError.

    Any failure of the parser is bad input too: TOML nested past the recursion limit, or an integer
    past Python's digit limit, raise other exceptions than TOMLDecodeError.
    """
    path = Path(path)
    text = read_run_file(path, max_size)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RunFileError(f"{shown_path(path)}: invalid TOML: {one_line(e)}") from None
    except (RecursionError, ValueError, MemoryError) as e:
        raise RunFileError(f"{shown_path(path)}: invalid TOML: {type(e).__name__}: {one_line(e, 120)}") from None
    data.setdefault("id", path.name.removesuffix(".toml"))
    return parse_run(data, shown_path(path))


def parse_run(data: dict[str, Any], origin: str) -> RunRequest:
    """Validate a run given as a mapping (a file's table, a source's job variables); RunFileError if bad."""
    try:
        run = RunRequest.model_validate(data)
    except ValidationError as e:
        lines = []
        for item in e.errors(include_url=False):
            dotted, message = describe_error(item, RunRequest)
            # A whole-run check names its own key path in its message.
            lines.append(f"{origin}: {dotted}: {message}" if dotted else f"{origin}: {message}")
        raise RunFileError(lines) from None
    except RecursionError:
        raise RunFileError(f"{origin}: nested too deeply to be a run") from None
    except Exception as e:  # a validator's own failure on input nobody foresaw is still bad input
        raise RunFileError(f"{origin}: cannot be read as a run ({type(e).__name__}: {one_line(e, 120)})") from None
    return run
