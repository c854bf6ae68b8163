"""The agent's settings: one frozen model, its sources and their precedence, token resolution."""

from __future__ import annotations

import ast
import difflib
import inspect
import itertools
import json
import logging
import os
import re
import stat
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from dagent._compat import tomllib
from dagent.errors import ConfigError
from dagent.images import normalize_registry
from dagent.units import MAX_CPUS, MAX_SECONDS, MIN_CPUS, MIN_MEMORY, parse_bytes

log = logging.getLogger("dagent.config")

ENV_PREFIX = "DAGENT_"
ENV_CONFIG = "DAGENT_CONFIG"
DEFAULT_CONFIG_FILE = "agent.toml"
MASK = "**********"

# Names other tools use for the same settings, honoured below the DAGENT_ names (DESIGN.md).
COMPAT_ENV: Mapping[str, str] = {
    "PREFECT__CLOUD__AGENT__NAME": "name",
    "PREFECT_API_URL": "api.url",
    "PREFECT_API_AUTH_STRING": "api.auth_string",
    "DOCKER_HOST": "docker.base_url",
}
# Tables that merge key by key across sources; every other list or table replaces.
TABLE_KEYS = (("docker", "env"), ("docker", "labels"))
# Token sources in DESIGN.md order after the CLI and DAGENT_API__TOKEN.
TOKEN_ENV = ("PREFECT_API_KEY", "PREFECT__CLOUD__AGENT__AUTH_TOKEN")

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BASE_URL_SCHEMES = ("unix://", "npipe://", "tcp://", "http://", "https://", "ssh://")
_VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Drive letters ("C:\\data") exist only on Windows; elsewhere "a:/x" is volume "a", as Docker reads it.
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]" if sys.platform == "win32" else r"(?!)")


def _default_base_url() -> str:
    return "npipe:////./pipe/docker_engine" if sys.platform == "win32" else "unix:///var/run/docker.sock"


# --- value types -------------------------------------------------------------------------------


def _list_from_text(value: Any) -> Any:
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


def _table_from_text(value: str) -> dict[str, Any]:
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


def _check_label_key(key: str) -> str:
    if not key.strip():
        raise ValueError("label keys must not be empty")
    if key.startswith("dagent."):
        raise ValueError(f"label {key!r}: the dagent.* prefix is reserved for the agent's own labels")
    return key


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
    return path.expanduser().absolute()


LocalPath = Annotated[Path, AfterValidator(_absolute)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
RegistryName = Annotated[str, AfterValidator(normalize_registry)]
AbsPath = Annotated[str, AfterValidator(_check_abs_path)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(_list_from_text), AfterValidator(_check_words)]
DeviceList = Annotated[list[Annotated[str, AfterValidator(check_device)]], NoDecode, BeforeValidator(_list_from_text)]


@dataclass(frozen=True, slots=True)
class Mount:
    """A volume mount: a host path (bind) or a named volume, mounted at an absolute container path."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        """True for a host path, False for a named volume."""
        return self.source.startswith("/") or bool(_WINDOWS_DRIVE_RE.match(self.source))

    def __str__(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


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
    return Mount(source=source, target=target, read_only=len(parts) == 3 and parts[2] == "ro")


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
VolumeList = Annotated[list[Volume], NoDecode, BeforeValidator(_list_from_text)]


def _check_base_url(value: str) -> str:
    if not value.startswith(_BASE_URL_SCHEMES):
        scheme = value.split("://", 1)[0] + "://" if "://" in value else repr(value)
        raise ValueError(f"unsupported scheme {scheme}; use one of {', '.join(_BASE_URL_SCHEMES)}")
    return value


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080)")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{value!r}: IPv6 hosts are written [::1]:8080")
    return value


def _check_http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/\s]+(?:/\S*)?", value):
        raise ValueError(f"{value!r} is not an http(s):// URL")
    return value.rstrip("/")


# --- the model ---------------------------------------------------------------------------------


class _Section(BaseModel):
    # inf and nan are never a setting: an infinite timeout overflows Python's waits.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ApiConfig(_Section):
    """The Prefect 3 API, used when `source = "prefect"`."""

    url: Annotated[str, AfterValidator(_check_http_url)] | None = None
    """Prefect API base URL, e.g. http://127.0.0.1:4200/api (also PREFECT_API_URL)."""
    container_url: Annotated[str, AfterValidator(_check_http_url)] | None = None
    """API URL flow containers use, when it differs from `api.url`; unset: `api.url`, with localhost
    pointed at host.docker.internal unless the container uses the host's network."""
    token: SecretStr | None = None
    """API key sent as a Bearer token (also PREFECT_API_KEY, PREFECT__CLOUD__AGENT__AUTH_TOKEN)."""
    token_file: LocalPath | None = None
    """File holding the API key; wins over `api.token` from the TOML file."""
    auth_string: SecretStr | None = None
    """`user:pass` for a self-hosted server's basic auth (also PREFECT_API_AUTH_STRING)."""
    work_pool: str = Field(default="dagent", min_length=1)
    """Work pool to serve; created as a `docker` pool when missing."""
    work_queues: StrList = []
    """Work queues of the pool to take runs from; empty means all."""
    default_image: str | None = None
    """Image for flow runs whose job variables name none (Prefect's own worker picks prefecthq/prefect)."""
    send_agent_logs: bool = True
    """Send the agent's own lines about a run to the Prefect API (seed `--no-cloud-logs` inverts)."""
    event_stream: bool = True
    """Listen to Prefect's event stream to poll as soon as a run is scheduled (polls stay the truth)."""
    heartbeat_interval: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    """Seconds between worker heartbeats."""
    prefetch: float = Field(default=10.0, ge=0, le=MAX_SECONDS)
    """Take runs scheduled up to this many seconds ahead."""
    timeout: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    """Seconds before one API request times out."""


class RegistryAuth(_Section):
    """Credentials for one registry."""

    registry: RegistryName
    """Registry host[:port] these credentials are for."""
    username: str = Field(min_length=1)
    """User name."""
    password: SecretStr | None = None
    """Password; prefer `password_file`."""
    password_file: LocalPath | None = None
    """File holding the password."""

    @model_validator(mode="after")
    def _one_password(self) -> RegistryAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of password and password_file")
        return self


class DockerConfig(_Section):
    """How runs become containers, and what runs may ask for."""

    base_url: Annotated[str, AfterValidator(_check_base_url)] = Field(default_factory=_default_base_url)
    """Docker daemon URL: unix://, npipe://, tcp://, http(s):// or ssh:// (also DOCKER_HOST)."""
    pull: Literal["if-not-present", "always", "never"] = "if-not-present"
    """When to pull a run's image (seed `--no-pull` is `never`)."""
    registry_allow_list: Annotated[list[RegistryName], NoDecode, BeforeValidator(_list_from_text)] | None = None
    """Registries images may come from; unset allows all."""
    registry_auth: list[RegistryAuth] = []
    """Registry credentials, in addition to ~/.docker/config.json."""
    volumes: VolumeList = []
    """Mounts for every container, `SRC:DST[:ro|rw]`."""
    network: str | None = None
    """Existing Docker network every container joins."""
    env: Annotated[dict[EnvName, str], NoDecode] = {}
    """Environment variables set in every container; merges key by key across sources."""
    labels: Annotated[dict[LabelKey, str], NoDecode] = {}
    """Labels put on every container; merges key by key across sources."""
    docker_interface: bool = True
    """Map host.docker.internal to the host gateway in containers (Linux, non-host networks)."""
    keep_containers: Literal["never", "on-failure", "always"] = "on-failure"
    """Which finished containers to keep for inspection (`dagent gc` removes them later)."""
    stop_grace: float = Field(default=10.0, ge=0, le=86400)
    """Seconds between SIGTERM and SIGKILL when a run is stopped."""
    run_timeout: float = Field(default=86400.0, gt=0, le=MAX_SECONDS)
    """Seconds a run may take when it sets no `timeout`; past it the run is stopped as timed-out."""
    allowed_host_paths: Annotated[list[AbsPath], NoDecode, BeforeValidator(_list_from_text)] = []
    """Host directories under which a run may bind-mount; empty allows none."""
    allow_named_volumes: bool = False
    """Let runs mount named volumes."""
    allow_privileged: bool = False
    """Let runs ask for `privileged = true`."""
    allow_host_network: bool = False
    """Let runs use the host's network, PID or IPC namespace."""
    allowed_capabilities: StrList = []
    """Capabilities runs may add with `cap_add`."""
    allowed_devices: DeviceList = []
    """Host devices runs may map with `devices`, HOST[:CONTAINER[:rwm]]; the permissions are a ceiling."""
    allow_gpus: bool = False
    """Let runs ask for GPUs with `gpus`."""
    allow_ports: bool = False
    """Let runs publish ports on the host with `ports`."""
    max_cpus: float | None = Field(default=None, ge=MIN_CPUS, le=MAX_CPUS)
    """Most CPUs one run may ask for; unset is no cap."""
    max_memory: Annotated[int, BeforeValidator(parse_bytes), Field(ge=MIN_MEMORY)] | None = None
    """Most memory one run may ask for, e.g. 2g (at least 6m, Docker's minimum); unset is no cap."""
    allowed_networks: StrList | None = None
    """Docker networks a run may pick with `network`; unset: only docker.network when that is set, else any."""
    verify_host_view: bool = True
    """Refuse host paths and devices unless the agent checked it shares the daemon's mount namespace
    (a unix:// daemon); false only where the daemon's paths are known to be the agent's."""

    @field_validator("allowed_capabilities")
    @classmethod
    def _caps_upper(cls, caps: list[str]) -> list[str]:
        return [c.upper().removeprefix("CAP_") for c in caps]


class HealthConfig(_Section):
    """The health and metrics endpoint."""

    address: Annotated[str, AfterValidator(_check_address)] | None = None
    """`host:port` to serve /health and /metrics on; unset is off (seed `agent_address`)."""


class InboxConfig(_Section):
    """The embedded local inbox source."""

    path: LocalPath = Field(default=Path("runs"), validate_default=True)
    """Directory holding new/, claimed/, done/, failed/ and cancel/."""


class RetryConfig(_Section):
    """Retries of transient faults of the Docker daemon and the API."""

    attempts: int = Field(default=5, ge=1)
    """Tries of one operation, the first included."""
    backoff_initial: float = Field(default=0.5, gt=0, le=3600)
    """Seconds before the first retry."""
    backoff_max: float = Field(default=10.0, gt=0, le=3600)
    """Longest wait between tries, in seconds."""

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")
        return self


@dataclass(frozen=True)
class _PendingSources:
    env: PydanticBaseSettingsSource
    compat: PydanticBaseSettingsSource
    toml: PydanticBaseSettingsSource


# load_config hands its sources to settings_customise_sources through this, so each is read once.
_pending: ContextVar[_PendingSources | None] = ContextVar("dagent_pending_sources", default=None)


class AgentConfig(BaseSettings):
    """dagent's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        title="dagent agent configuration",
    )

    name: str = Field(default="agent", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    """Agent name (also PREFECT__CLOUD__AGENT__NAME)."""
    labels: StrList = []
    """Labels of this agent; it takes runs whose required labels are a subset."""
    source: Literal["inbox", "prefect"] = "inbox"
    """Where runs come from."""
    max_polls: int | None = Field(default=None, ge=1)
    """Stop after this many polls; unset polls forever."""
    poll_interval: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    """Seconds between polls; unset is 1 for the inbox and 10 for Prefect."""
    concurrency: int = Field(default=4, ge=1)
    """Most runs in flight at once."""
    show_flow_logs: bool = False
    """Stream each container's output into the agent's log."""
    log_format: Literal["text", "json"] = "text"
    """Agent log lines as text or one JSON object per line."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe agent log level shown."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    inbox: InboxConfig = Field(default_factory=InboxConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def effective_poll_interval(self) -> float:
        """Seconds between polls, with the per-source default applied."""
        if self.poll_interval is not None:
            return self.poll_interval
        return 1.0 if self.source == "inbox" else 10.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence, highest first: CLI flags (init kwargs) > DAGENT_* env > compatibility env
        # names and api.token_file > the TOML file > defaults.
        pending = _pending.get() or _make_sources(settings_cls, {}, os.environ, find_config_file(None, os.environ))
        return (init_settings, pending.env, pending.compat, pending.toml)


# --- sources -----------------------------------------------------------------------------------


class DagentEnvSettingsSource(EnvSettingsSource):
    """DAGENT_* variables, read from a given mapping and computed once."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._data: dict[str, Any] | None = None
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Same shape as the parent's, from our mapping instead of os.environ (tests, validate).
        return {k.lower(): v for k, v in self._environ.items()}

    def __call__(self) -> dict[str, Any]:
        if self._data is None:
            try:
                data = super().__call__()
            except SettingsError as e:
                raise ConfigError(self._explain(e)) from None
            # Tables arrive as JSON text; decode them here so they merge key by key with the
            # other sources instead of replacing them.
            for path in TABLE_KEYS:
                value = _get_path(data, path)
                if isinstance(value, str):
                    try:
                        _set_path(data, list(path), _table_from_text(value))
                    except ValueError as e:
                        raise ConfigError(f"env {env_name('.'.join(path))}: {'.'.join(path)}: {e}") from None
            self._data = data
        return self._data

    def _explain(self, error: SettingsError) -> str:
        """Name the variable pydantic-settings could not decode (it names only the section)."""
        match = re.search(r'field "([^"]+)"', str(error))
        prefix = env_name(match.group(1)) if match else ENV_PREFIX
        names = sorted(k for k in self._environ if k.upper().startswith(prefix))
        for name in names:
            try:
                json.loads(self._environ[name])
            except json.JSONDecodeError as e:
                dotted = name.upper().removeprefix(ENV_PREFIX).lower().replace("__", ".")
                return f"env {name}: {dotted}: not valid JSON: {e.msg}"
        return f"env {names[0] if names else prefix + '*'}: {error}"


class TomlFileSettingsSource(TomlConfigSettingsSource):
    """The TOML file, with syntax errors named by file and line and relative paths made absolute."""

    # Relative paths in a file are relative to that file, as in docker compose.
    _PATH_KEYS = (("api", "token_file"), ("inbox", "path"))

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        self.path = path
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            with open(file_path, "rb") as f:
                data: dict[str, Any] = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file_path}: invalid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_path}: not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"{file_path}: cannot read: {e.strerror}") from None
        base = file_path.resolve().parent
        for section, key in self._PATH_KEYS:
            table = data.get(section)
            if isinstance(table, dict) and isinstance(table.get(key), str):
                table[key] = str(base / Path(table[key]).expanduser())
        auths = data.get("docker", {}).get("registry_auth") if isinstance(data.get("docker"), dict) else None
        for auth in auths if isinstance(auths, list) else []:
            if isinstance(auth, dict) and isinstance(auth.get("password_file"), str):
                auth["password_file"] = str(base / Path(auth["password_file"]).expanduser())
        return data


class CompatEnvSettingsSource(InitSettingsSource):
    """Other tools' env names (PREFECT_*, DOCKER_HOST) and the token from api.token_file.

    It sits between DAGENT_* and the TOML file, which is where DESIGN.md puts both.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        environ: Mapping[str, str],
        higher: tuple[Mapping[str, Any], PydanticBaseSettingsSource],
        toml: TomlFileSettingsSource,
    ) -> None:
        cli, env = higher
        self.token_source: str | None = None
        self.env_names: dict[str, str] = {}
        data: dict[str, Any] = {}
        for name, dotted in COMPAT_ENV.items():
            if environ.get(name):
                _set_path(data, dotted.split("."), environ[name])
                self.env_names[dotted] = name
        for name in TOKEN_ENV:
            if environ.get(name):
                _set_path(data, ["api", "token"], environ[name])
                self.token_source, self.env_names["api.token"] = f"env:{name}", name
                break
        layers = (("command line", cli), (f"env {env_name('api.token_file')}", env()), (str(toml.path), toml.toml_data))
        found = [(origin, v) for origin, layer in layers if (v := _get_path(layer, ("api", "token_file"))) is not None]
        if found:
            origin, token_file = found[0]
            # Read even when a higher token wins: a broken token_file is a config mistake either way.
            try:
                token = read_token_file(Path(str(token_file)))
            except ConfigError as e:
                raise ConfigError(f"{origin}: {e}") from None
            if self.token_source is None:
                _set_path(data, ["api", "token"], token)
                self.token_source = "token_file"
        super().__init__(settings_cls, data)


def read_token_file(path: Path) -> str:
    """Read an API token from a file, warning when other users can read it."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
        mode = path.expanduser().stat().st_mode
    except OSError as e:
        shown = str(path) if str(path).isprintable() else repr(str(path))  # an error stays one line
        raise ConfigError(f"api.token_file: cannot read {shown}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"api.token_file: {path} is not UTF-8 text") from None
    token = text.rstrip("\r\n")
    if not token.strip():
        raise ConfigError(f"api.token_file: {path} is empty")
    if "\n" in token:
        raise ConfigError(f"api.token_file: {path} holds more than one line")
    if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("api.token_file %s is readable by other users; chmod 600 it", path)
    return token


def _make_sources(
    settings_cls: type[BaseSettings], cli: Mapping[str, Any], environ: Mapping[str, str], path: Path | None
) -> _PendingSources:
    env = DagentEnvSettingsSource(settings_cls, environ)
    toml = TomlFileSettingsSource(settings_cls, path)
    compat = CompatEnvSettingsSource(settings_cls, environ, (cli, env), toml)
    return _PendingSources(env=env, compat=compat, toml=toml)


def find_config_file(explicit: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The TOML file to read: `--config`, else $DAGENT_CONFIG, else ./agent.toml if present."""
    for given, origin in ((explicit, "--config"), (environ.get(ENV_CONFIG), ENV_CONFIG)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found ({origin})")
            return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedConfig:
    """An effective configuration with where each value came from."""

    config: AgentConfig
    sources: Mapping[str, str]
    path: Path | None

    def show(self) -> dict[str, Any]:
        """The `config show --json` document: every secret masked."""
        return {"config": self.config.model_dump(mode="json"), "sources": dict(self.sources)}


def load_config(
    cli: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Load the effective configuration from flags, environment and file; raise ConfigError."""
    cli = dict(cli or {})
    environ = os.environ if environ is None else environ
    path = find_config_file(config_file, environ)
    check_env_names(environ)
    pending = _make_sources(AgentConfig, cli, environ, path)
    token = _pending.set(pending)
    try:
        config = AgentConfig(**cli)
    except ValidationError as e:
        raise ConfigError(_error_lines(e, cli, pending, path)) from None
    finally:
        _pending.reset(token)
    return LoadedConfig(config=config, sources=_provenance(cli, pending), path=path)


def _layers(cli: Mapping[str, Any], pending: _PendingSources) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield "cli", cli
    yield "env", pending.env()
    yield "compat", pending.compat()
    yield "toml", pending.toml()


def _provenance(cli: Mapping[str, Any], pending: _PendingSources) -> dict[str, str]:
    assert isinstance(pending.compat, CompatEnvSettingsSource)
    sources: dict[str, str] = {}
    layers = list(_layers(cli, pending))
    for dotted in leaf_keys():
        origin = "default"
        for name, layer in layers:
            if _get_path(layer, tuple(dotted.split("."))) is not None:
                origin = "env" if name == "compat" else name
                break
        sources[dotted] = origin
    # The token's origin is named exactly (DESIGN.md), the others by kind.
    token_origin = sources["api.token"]
    if token_origin == "env" and _get_path(pending.env(), ("api", "token")) is not None:
        sources["api.token"] = "env:DAGENT_API__TOKEN"
    elif token_origin == "env":
        sources["api.token"] = pending.compat.token_source or "env"
    return sources


def leaf_keys(model: type[BaseModel] = AgentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration, sections flattened."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            keys.extend(leaf_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def env_name(dotted: str) -> str:
    """The DAGENT_* variable for a dotted key."""
    return ENV_PREFIX + dotted.replace(".", "__").upper()


def check_env_names(environ: Mapping[str, str]) -> None:
    """Refuse DAGENT_* variables that name no setting, suggesting the nearest one."""
    known = {env_name(k) for k in leaf_keys()} | {ENV_CONFIG}
    known |= {env_name(name) for name, f in AgentConfig.model_fields.items() if _is_section(f.annotation)}
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            hint = difflib.get_close_matches(upper, known, n=1)
            extra = f"; did you mean {hint[0]}?" if hint else ""
            if upper.startswith(("DAGENT_DOCKER__ENV__", "DAGENT_DOCKER__LABELS__")):
                table = upper.split("__")[1].lower()
                extra = f'; set docker.{table} as JSON: {env_name("docker." + table)}=\'{{"KEY": "value"}}\''
            lines.append(f"env {name}: unknown setting{extra}")
    if lines:
        raise ConfigError(lines)


def _is_section(annotation: Any) -> TypeGuard[type[_Section]]:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


def _get_path(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


# --- error messages ----------------------------------------------------------------------------

# Keys whose values are never echoed in an error: credentials, and environment values (a run's
# or the agent's env often carries a password).
_SECRET_PARTS = ("token", "auth_string", "password", "env")


def _error_lines(
    error: ValidationError, cli: Mapping[str, Any], pending: _PendingSources, path: Path | None
) -> list[str]:
    assert isinstance(pending.compat, CompatEnvSettingsSource)
    compat = pending.compat
    lines = []
    layers = list(_layers(cli, pending))
    for item in error.errors(include_url=False):
        loc = tuple(str(p) for p in item["loc"])
        dotted, message = describe_error(item, AgentConfig)
        # List indices and dict-key markers are not keys; the first part always is (even "0").
        key_loc = loc[:1] + tuple(p for p in loc[1:] if not p.isdigit() and p != "[key]")
        origin = "defaults"
        for name, layer in layers:
            if _get_path(layer, key_loc[:2]) is not None:
                origin = {
                    "cli": "command line",
                    "env": f"env {env_name('.'.join(key_loc[:2]))}",
                    "compat": f"env {compat.env_names.get('.'.join(key_loc[:2]), '')}".rstrip(),
                    "toml": str(path),
                }[name]
                break
        lines.append(f"{origin}: {dotted}: {message}")
    return lines


def describe_error(item: Any, model: type[BaseModel]) -> tuple[str, str]:
    """(dotted key path, message) for one pydantic error; secrets are never echoed."""
    loc = tuple(str(p) for p in item["loc"])
    # A key with control characters or spaces is shown quoted, so an error stays one plain line.
    dotted = ".".join(p if p.isprintable() and p.strip() == p and p else repr(p) for p in loc if p != "[key]")
    kind: str = item["type"]
    msg: str = item["msg"]
    if kind == "extra_forbidden":
        node: type[BaseModel] = model
        for part in loc[:-1]:
            annotation = node.model_fields[part].annotation if part in node.model_fields else None
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                break
            node = annotation
        hint = difflib.get_close_matches(loc[-1], list(node.model_fields), n=1, cutoff=0.7)
        if not hint and model is AgentConfig:  # maybe a key of another section, e.g. docker.concurrency
            by_name = {k.rsplit(".", 1)[-1]: k for k in leaf_keys()}
            hint = [by_name[m] for m in difflib.get_close_matches(loc[-1], list(by_name), n=1, cutoff=0.7)]
        return dotted, "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
    msg = msg.removeprefix("Value error, ")
    secret = any(s in p for p in loc for s in _SECRET_PARTS)
    value = item.get("input")
    if not secret and kind not in ("value_error", "assertion_error") and not isinstance(value, (dict, list)):
        shown = repr(value)
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return dotted, msg


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name → the docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def describe(*models: type[BaseModel]) -> None:
    """Give the models' fields the docstrings written under them, for schemas and docs.

    Pydantic's use_attribute_docstrings does this at import, reading and parsing the source: a
    fifth of an agent's start-up. Only `config schema` and `python -m dagent.docs` need it.
    """
    for model in models:
        if getattr(model, "__dagent_described__", False):
            continue
        for name, doc in attribute_docs(model).items():
            if name in model.model_fields and model.model_fields[name].description is None:
                model.model_fields[name].description = doc
        model.model_rebuild(force=True)
        model.__dagent_described__ = True  # type: ignore[attr-defined]


def describe_config() -> None:
    """Field descriptions on the configuration models (sections first: the agent's schema is built from theirs)."""
    describe(ApiConfig, RegistryAuth, DockerConfig, HealthConfig, InboxConfig, RetryConfig, AgentConfig)


def json_schema() -> dict[str, Any]:
    """The JSON schema of agent.toml (what `dagent config schema` prints and schemas/ holds)."""
    describe_config()
    schema = AgentConfig.model_json_schema()
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
