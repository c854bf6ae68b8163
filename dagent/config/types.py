"""Names, value types and validators of the configuration (pure)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_settings import (
    NoDecode,
)

from dagent.images import normalize_registry

ENV_PREFIX = "DAGENT_"
ENV_CONFIG = "DAGENT_CONFIG"
DEFAULT_CONFIG_FILE = "agent.toml"
MASK = "**********"

# Names other tools use for the same settings, honoured below the DAGENT_ names (docs/configuration.md).
COMPAT_ENV: Mapping[str, str] = {
    "PREFECT__CLOUD__AGENT__NAME": "name",
    "PREFECT_API_URL": "api.url",
    "PREFECT_API_AUTH_STRING": "api.auth_string",
    "DOCKER_HOST": "docker.base_url",
    "DOCKER_TLS_VERIFY": "docker.tls.enabled",
    "DOCKER_CERT_PATH": "docker.tls.cert_path",
    "DOCKER_CLIENT_TIMEOUT": "docker.timeout",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "api.heartbeat_interval",
    "PREFECT_WORKER_QUERY_SECONDS": "poll_interval",
    "PREFECT_WORKER_PREFETCH_SECONDS": "api.prefetch",
}
# Tables that merge key by key across sources; every other list or table replaces.
TABLE_KEYS = (("docker", "env"), ("docker", "labels"))
# Token sources in the documented order (docs/configuration.md) after the CLI and DAGENT_API__TOKEN.
TOKEN_ENV = ("PREFECT_API_KEY", "PREFECT__CLOUD__AGENT__AUTH_TOKEN")

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BASE_URL_SCHEMES = ("unix://", "npipe://", "tcp://", "http://", "https://", "ssh://")
_VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Drive letters ("C:\\data") exist only on Windows; elsewhere "a:/x" is volume "a", as Docker reads it.
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]" if sys.platform == "win32" else r"(?!)")


def default_base_url() -> str:
    return "npipe:////./pipe/docker_engine" if sys.platform == "win32" else "unix:///var/run/docker.sock"


# --- value types -------------------------------------------------------------------------------


def list_from_text(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string where a list is expected (env and flags)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a valid JSON list: {e.msg}") from None
    if text.startswith("{"):
        raise ValueError("expected a JSON list or comma-separated values, not an object")
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_words(value: list[str]) -> list[str]:
    for item in value:
        if not item.strip():
            raise ValueError("items must not be empty")
    return value


def table_from_text(value: str) -> dict[str, Any]:
    """Parse a table given as JSON text in the environment."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f'expected a JSON object such as {{"KEY": "value"}}: {e.msg}') from None
    if not isinstance(parsed, dict):
        raise ValueError('expected a JSON object such as {"KEY": "value"}')
    return parsed


def _check_env_name(name: str) -> str:
    if not _ENV_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return name


def _check_prefect_setting(name: str) -> str:
    if not re.fullmatch(r"PREFECT_[A-Z0-9_]+", name):
        raise ValueError(f"{name[:60]!r} is not a Prefect setting's variable (PREFECT_ and capitals)")
    return name


PrefectSetting = Annotated[str, AfterValidator(_check_prefect_setting)]


def _check_label_key(key: str) -> str:
    if not key.strip():
        raise ValueError("label keys must not be empty")
    if key.startswith("dagent."):
        raise ValueError(f"label {key!r}: the dagent.* prefix is reserved for the agent's own labels")
    return key


def normalize_capability(cap: str) -> str:
    """A capability as Docker names it: upper case, no CAP_ prefix."""
    return cap.upper().removeprefix("CAP_")


def check_device(value: str) -> str:
    """A device spec HOST[:CONTAINER[:rwm]], both paths absolute."""
    parts = value.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.startswith("/") and p.isprintable() for p in parts[:2]):
        raise ValueError(f"device {value!r} is not HOST_PATH[:CONTAINER_PATH[:rwm]]")
    if len(parts) == 3 and (not parts[2] or set(parts[2]) - set("rwm")):
        raise ValueError(f"device {value!r}: permissions must be made of r, w and m")
    return value


def _check_abs_path(value: str) -> str:
    if not (value.startswith("/") or _WINDOWS_DRIVE_RE.match(value)):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def _absolute(path: Path) -> Path:
    # Made absolute at load so the path means the same whoever reads it later (show, a restart).
    try:
        return path.expanduser().absolute()
    except RuntimeError:  # ~user of no such user, or ~ with no home
        raise ValueError(f"{str(path)[:60]!r}: cannot expand ~ (no such user or home directory)") from None


LocalPath = Annotated[Path, AfterValidator(_absolute)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
RegistryName = Annotated[str, AfterValidator(normalize_registry)]
AbsPath = Annotated[str, AfterValidator(_check_abs_path)]
PullPolicy = Literal["if-not-present", "always", "never"]
StrList = Annotated[list[str], NoDecode, BeforeValidator(list_from_text), AfterValidator(_check_words)]
DeviceList = Annotated[list[Annotated[str, AfterValidator(check_device)]], NoDecode, BeforeValidator(list_from_text)]


@dataclass(frozen=True, slots=True)
class Mount:
    """A volume mount: a host path (bind) or a named volume, mounted at an absolute container path."""

    source: str
    target: str
    read_only: bool = False
    # Whether `:rw` was written: kept as written, as Prefect's worker passes a volume (`docker inspect`
    # then shows the same Binds); it grants nothing, so two mounts that differ only by it are equal.
    mode_written: bool = field(default=False, compare=False)

    @property
    def is_bind(self) -> bool:
        """True for a host path, False for a named volume."""
        return self.source.startswith("/") or bool(_WINDOWS_DRIVE_RE.match(self.source))

    def __str__(self) -> str:
        mode = ":ro" if self.read_only else ":rw" if self.mode_written else ""
        return f"{self.source}:{self.target}{mode}"


def parse_volume(value: Any) -> Mount:
    """Parse `SRC:DST[:ro|rw]`: SRC an absolute host path or a volume name, DST an absolute path."""
    if isinstance(value, Mount):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string SRC:DST[:ro|rw]")
    if not value.isprintable():
        raise ValueError("volume holds a control character (a NUL byte, a newline, ...)")
    # A Windows drive letter ("C:\data") holds a colon that is not a separator.
    drive = value[:2] if _WINDOWS_DRIVE_RE.match(value) else ""
    parts = value[len(drive) :].split(":")
    parts[0] = drive + parts[0]
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise ValueError(f"volume {value!r}: mode must be ro or rw, not {parts[2]!r}")
    elif len(parts) != 2:
        raise ValueError(f"volume {value!r} is not SRC:DST[:ro|rw]")
    source, target = parts[0], parts[1]
    if not source:
        raise ValueError(f"volume {value!r} has no source")
    is_path = source.startswith(("/", ".", "~")) or bool(drive)
    if is_path and not (source.startswith("/") or drive):
        raise ValueError(f"volume {value!r}: host path {source!r} must be absolute")
    if not is_path and not _VOLUME_NAME_RE.fullmatch(source):
        raise ValueError(f"volume {value!r}: {source!r} is neither an absolute path nor a volume name")
    if not PurePosixPath(target).is_absolute() and not PureWindowsPath(target).is_absolute():
        raise ValueError(f"volume {value!r}: container path {target!r} must be absolute")
    return Mount(
        source=source, target=target, read_only=len(parts) == 3 and parts[2] == "ro", mode_written=len(parts) == 3
    )


Volume = Annotated[
    Mount,
    BeforeValidator(parse_volume),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[^:]+(:[^:]+)?:[^:]+(:(ro|rw))?$",
            "description": "SRC:DST[:ro|rw] — SRC an absolute host path or a named volume",
        }
    ),
]
VolumeList = Annotated[list[Volume], NoDecode, BeforeValidator(list_from_text)]


def check_base_url(value: str) -> str:
    if not value.startswith(_BASE_URL_SCHEMES):
        scheme = value.split("://", 1)[0] + "://" if "://" in value else repr(value)
        raise ValueError(f"unsupported scheme {scheme}; use one of {', '.join(_BASE_URL_SCHEMES)}")
    return value


def check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080)")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{value!r}: IPv6 hosts are written [::1]:8080")
    return value


def redact_url(value: str) -> str:
    """A URL fit to show: any user name and password before `@` in its authority replaced by ***."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@", r"\1***@", value)


def check_http_url(value: str) -> str:
    # Credentials in the URL would be printed wherever the URL is (logs, errors, `config show`).
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]*@", value):
        raise ValueError(
            f"{redact_url(value)!r} holds a user name or password; give them in api.auth_string (or api.token)"
        )
    if not re.fullmatch(r"https?://[^/\s]+(?:/\S*)?", value):
        raise ValueError(f"{redact_url(value)!r} is not an http(s):// URL")
    return value.rstrip("/")


def env_name(dotted: str) -> str:
    """The DAGENT_* variable for a dotted key."""
    return ENV_PREFIX + dotted.replace(".", "__").upper()


def get_path(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value
