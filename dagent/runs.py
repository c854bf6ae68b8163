"""RunRequest: the typed, source-independent description of one run, and loading it from a TOML file."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from dagent._compat import tomllib
from dagent.config import EnvName, Volume, describe_error
from dagent.errors import RunFileError
from dagent.images import parse_image
from dagent.units import parse_bytes

# Container names allow [a-zA-Z0-9][a-zA-Z0-9_.-]; "dagent-" plus the id must stay one.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
PORT_RE = re.compile(
    r"^(?:(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>[0-9]{1,5}):)?(?P<ctr>[0-9]{1,5})(?:/(?P<proto>tcp|udp|sctp))?$"
)


def _check_run_id(value: str) -> str:
    if not RUN_ID_RE.match(value):
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
    match = PORT_RE.match(value)
    if not match or any(int(p) > 65535 or int(p) == 0 for p in (match["host"], match["ctr"]) if p):
        raise ValueError(f"port {value!r} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp] or CONTAINER_PORT")
    return value


def _check_device(value: str) -> str:
    parts = value.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.startswith("/") for p in parts[:2]):
        raise ValueError(f"device {value!r} is not HOST_PATH[:CONTAINER_PATH[:rwm]]")
    if len(parts) == 3 and (not parts[2] or set(parts[2]) - set("rwm")):
        raise ValueError(f"device {value!r}: permissions must be made of r, w and m")
    return value


def _check_gpus(value: Any) -> Any:
    # One clear message instead of one per branch of the union.
    if value is None or value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f'must be "all" or a count of at least 1 (got {value!r})')


Command = Annotated[tuple[str, ...], BeforeValidator(_split_command)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]


class RunRequest(BaseModel):
    """One run: what to start, with what, and what it may use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    network: str | None = None
    """Docker network, or "host" (needs docker.allow_host_network)."""
    cpus: float | None = Field(default=None, gt=0)
    """CPUs, e.g. 1.5."""
    memory: Bytes | None = None
    """Memory limit, e.g. 512m."""
    shm_size: Bytes | None = None
    """Size of /dev/shm, e.g. 1g."""
    gpus: Annotated[Literal["all"] | int | None, BeforeValidator(_check_gpus)] = None
    """GPUs: "all" or a count (needs docker.allow_gpus)."""
    devices: tuple[Annotated[str, AfterValidator(_check_device)], ...] = ()
    """Host devices HOST[:CONTAINER[:rwm]] (each must be in docker.allowed_devices)."""
    ports: tuple[Annotated[str, AfterValidator(_check_port)], ...] = ()
    """Published ports [HOST_IP:]HOST_PORT:CONTAINER_PORT[/proto] (needs docker.allow_ports)."""
    timeout: float | None = Field(default=None, gt=0)
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


def load_run_file(path: str | Path) -> RunRequest:
    """Load and validate a run file; host paths are made absolute and resolved. Raises RunFileError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RunFileError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise RunFileError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise RunFileError(f"{path}: invalid TOML: {e}") from None
    data.setdefault("id", path.name.removesuffix(".toml"))
    return parse_run(data, str(path))


def parse_run(data: dict[str, Any], origin: str) -> RunRequest:
    """Validate a run given as a mapping (a file's table, a source's job variables)."""
    try:
        run = RunRequest.model_validate(data)
    except ValidationError as e:
        lines = []
        for item in e.errors(include_url=False):
            dotted, message = describe_error(item, RunRequest)
            lines.append(f"{origin}: {dotted or '(run)'}: {message}")
        raise RunFileError(lines) from None
    return resolve_host_paths(run)


def resolve_host_paths(run: RunRequest) -> RunRequest:
    """Resolve symlinks and `..` in bind sources and devices, so policy judges the real path."""
    volumes = tuple(replace(m, source=os.path.realpath(m.source)) if m.is_bind else m for m in run.volumes)
    devices = tuple(_resolve_device(d) for d in run.devices)
    return run.model_copy(update={"volumes": volumes, "devices": devices})


def _resolve_device(spec: str) -> str:
    host, *rest = spec.split(":")
    return ":".join([os.path.realpath(host), *rest])
