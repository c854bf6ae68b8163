"""The configuration models: one frozen section per table, and AgentConfig with its source order."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dagent.config.types import (
    ENV_PREFIX,
    AbsPath,
    DeviceList,
    EnvName,
    LabelKey,
    LocalPath,
    PrefectSetting,
    PullPolicy,
    RegistryName,
    StrList,
    VolumeList,
    check_address,
    check_base_url,
    check_http_url,
    default_base_url,
    list_from_text,
    normalize_capability,
)
from dagent.units import MAX_CPUS, MAX_SECONDS, MIN_CPUS, MIN_MEMORY, parse_bytes, parse_duration

# --- the model ---------------------------------------------------------------------------------


class Section(BaseModel):
    # inf and nan are never a setting: an infinite timeout overflows Python's waits.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ApiConfig(Section):
    """The Prefect 3 API, used when `source = "prefect"`."""

    url: Annotated[str, AfterValidator(check_http_url)] | None = None
    """Prefect API base URL, e.g. http://127.0.0.1:4200/api (also PREFECT_API_URL)."""
    container_url: Annotated[str, AfterValidator(check_http_url)] | None = None
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
    base_job_template: LocalPath | None = None
    """JSON file: the base job template of the work pool when dagent creates it (else dagent's own)."""
    default_image: str | None = None
    """Image for flow runs whose job variables name none (Prefect's own worker picks prefecthq/prefect)."""
    send_agent_logs: bool = True
    """Send the agent's own lines about a run to the Prefect API (seed `--no-cloud-logs` inverts)."""
    pass_settings: Annotated[list[PrefectSetting], NoDecode, BeforeValidator(list_from_text)] = []
    """The agent's own PREFECT_* variables to copy into every flow container, named one by one
    (Prefect's worker copies all of its settings, credentials included); kept secret, never shown."""
    worker_labels: bool = True
    """Give each flow run the worker's labels, as Prefect's worker does (`prefect.worker.name`,
    `prefect.worker.type`, `prefect.work-pool.name`, `prefect.work-pool.id`): one request a run."""
    send_events: bool = True
    """Emit the events Prefect's worker emits (worker started and stopped, each run's submission,
    container and end), for automations and the UI; none while idle."""
    event_stream: bool = True
    """Listen to Prefect's event stream to poll as soon as a run is scheduled (polls stay the truth)."""
    heartbeat_interval: float = Field(default=120.0, gt=0, le=MAX_SECONDS)
    """Seconds between worker heartbeats; Prefect marks the agent OFFLINE after three missed (its worker: 30)."""
    prefetch: float = Field(default=10.0, ge=0, le=MAX_SECONDS)
    """Take runs scheduled up to this many seconds ahead."""
    timeout: float = Field(default=30.0, gt=0, le=MAX_SECONDS)
    """Seconds one API request may take, its whole answer read (a retry gets as long again)."""


class RegistryAuth(Section):
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


class DockerTLS(Section):
    """TLS to a daemon on tcp:// or https://, as the Docker CLI's `--tlsverify`; its CA wins over REQUESTS_CA_BUNDLE."""

    enabled: bool | None = None
    """Use TLS; unset: for https:// or when a certificate is given (DOCKER_TLS_VERIFY turns it on)."""
    verify: bool = True
    """Check the daemon's certificate against `ca_cert` (else the system's CAs); false only for tests."""
    ca_cert: LocalPath | None = None
    """CA certificate the daemon's must chain to (default: `cert_path`/ca.pem)."""
    client_cert: LocalPath | None = None
    """Client certificate shown to the daemon (default: `cert_path`/cert.pem)."""
    client_key: LocalPath | None = None
    """The client certificate's key (default: `cert_path`/key.pem)."""
    cert_path: LocalPath | None = None
    """Directory with ca.pem, cert.pem and key.pem (also DOCKER_CERT_PATH; default when enabled: ~/.docker)."""

    @model_validator(mode="after")
    def _pair(self) -> DockerTLS:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("give both client_cert and client_key, or neither")
        return self

    @property
    def on(self) -> bool:
        """Whether TLS is wanted (the URL's scheme aside)."""
        if self.enabled is not None:
            return self.enabled
        return any(p is not None for p in (self.ca_cert, self.client_cert, self.cert_path))


class DockerConfig(Section):
    """How runs become containers, and what runs may ask for."""

    base_url: Annotated[str, AfterValidator(check_base_url)] = Field(default_factory=default_base_url)
    """Docker daemon URL: unix://, npipe://, tcp://, http(s):// or ssh://user@host (also DOCKER_HOST)."""
    tls: DockerTLS = DockerTLS()
    """TLS to a remote daemon."""
    timeout: float = Field(default=60.0, gt=0, le=MAX_SECONDS)
    """Seconds before one daemon request times out (also DOCKER_CLIENT_TIMEOUT); waits on a run are not bound by it."""
    pull: PullPolicy = "if-not-present"
    """When to pull a run's image (seed `--no-pull` is `never`)."""
    registry_allow_list: Annotated[list[RegistryName], NoDecode, BeforeValidator(list_from_text)] | None = None
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
    keep_for: Annotated[float, BeforeValidator(parse_duration)] | None = None
    """Remove kept containers this long after they ended (`24h`, `30m`, seconds), in the loop; unset: kept."""
    stop_grace: float = Field(default=10.0, ge=0, le=86400)
    """Seconds between SIGTERM and SIGKILL when a run is stopped."""
    run_timeout: float = Field(default=86400.0, gt=0, le=MAX_SECONDS)
    """Seconds a run may take when it sets no `timeout`; past it the run is stopped as timed-out."""
    allowed_host_paths: Annotated[list[AbsPath], NoDecode, BeforeValidator(list_from_text)] = []
    """Host directories under which a run may bind-mount; empty allows none."""
    allow_named_volumes: bool = False
    """Let runs mount named volumes (of the local driver with no options, or binding an allowed host path)."""
    allowed_volume_drivers: StrList = []
    """Volume drivers besides `local` whose named volumes runs may mount (their options are not judged)."""
    allowed_volumes: StrList | None = None
    """Named volumes runs may mount, as shell patterns (`cache-*`); unset: any, except an existing volume
    that containers other than this agent's use."""
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
    max_pids: int | None = Field(default=None, ge=1, le=2**31 - 1)
    """Most processes and threads one run may have at once (`pids_limit`), and the limit of a run
    that asks for none; unset is no cap (one run can then use up the host's PIDs)."""
    allowed_log_drivers: StrList = []
    """Log drivers runs may pick with `log_config` besides json-file and local (with `none` a failed
    run has no output to show)."""
    allowed_networks: StrList | None = None
    """Docker networks a run may pick with `network`; unset: only docker.network when that is set, else any."""
    allowed_pull_policies: Annotated[list[PullPolicy], NoDecode, BeforeValidator(list_from_text)] | None = None
    """Pull policies a run may ask for (Prefect's `image_pull_policy`); unset allows all three."""
    verify_host_view: bool = True
    """Refuse host paths and devices unless the agent checked it shares the daemon's mount namespace
    (a unix:// daemon); false only where the daemon's paths are known to be the agent's."""

    @field_validator("allowed_capabilities")
    @classmethod
    def _caps_upper(cls, caps: list[str]) -> list[str]:
        return [normalize_capability(c) for c in caps]


class HealthConfig(Section):
    """The health and metrics endpoint."""

    address: Annotated[str, AfterValidator(check_address)] | None = None
    """`host:port` to serve /health and /metrics on; unset is off (seed `agent_address`)."""


class InboxConfig(Section):
    """The embedded local inbox source."""

    path: LocalPath = Field(default=Path("runs"), validate_default=True)
    """Directory holding new/, claimed/, done/, failed/ and cancel/."""
    max_file_size: Annotated[int, BeforeValidator(parse_bytes), Field(ge=1024, le=1 << 30)] = 1 << 20
    """Largest run file the inbox reads, e.g. 1m; a larger one is moved to failed/."""


class RetryConfig(Section):
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


def default_worker_name() -> str:
    """agent-<host name>, cut to a valid agent name."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "host"
    return f"agent-{host}"[:63]


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
    """Agent name (also PREFECT__CLOUD__AGENT__NAME); with `source = "prefect"`, unset is agent-<host name>."""
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

    @model_validator(mode="before")
    @classmethod
    def _worker_name(cls, data: Any) -> Any:
        # Prefect shows workers by name: hosts that all defaulted to "agent" would look like one worker.
        if isinstance(data, dict) and "name" not in data and data.get("source") == "prefect":
            return {**data, "name": default_worker_name()}
        return data

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
        from dagent.config.pending import find_config_file, make_sources, pending_sources  # it imports this module

        pending = pending_sources.get() or make_sources(
            settings_cls, {}, os.environ, find_config_file(None, os.environ)
        )
        return (init_settings, pending.env, pending.compat, pending.toml)
