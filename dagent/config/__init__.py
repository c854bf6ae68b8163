"""The agent's settings: one frozen model, its sources and their precedence, token resolution.

Laid out as pydantic-settings is: value types (`types`), the models (`models`), one module per
settings source (`env_source`, `compat_source`, `toml_source`), the sources one load reads
(`pending`), loading with provenance and one-line errors (`loading`), and the schema (`schema`).
"""

from dagent.config.loading import (
    LoadedConfig,
    check_env_names,
    describe_error,
    leaf_keys,
    load_config,
)
from dagent.config.models import (
    AgentConfig,
    ApiConfig,
    DockerConfig,
    HealthConfig,
    InboxConfig,
    RegistryAuth,
    RetryConfig,
)
from dagent.config.schema import attribute_docs, describe, describe_config, json_schema
from dagent.config.types import (
    COMPAT_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_CONFIG,
    ENV_PREFIX,
    MASK,
    TOKEN_ENV,
    EnvName,
    Mount,
    Volume,
    check_device,
    env_name,
    parse_volume,
)

__all__ = [
    "COMPAT_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "MASK",
    "TOKEN_ENV",
    "AgentConfig",
    "ApiConfig",
    "DockerConfig",
    "EnvName",
    "HealthConfig",
    "InboxConfig",
    "LoadedConfig",
    "Mount",
    "RegistryAuth",
    "RetryConfig",
    "Volume",
    "attribute_docs",
    "check_device",
    "check_env_names",
    "describe",
    "describe_config",
    "describe_error",
    "env_name",
    "json_schema",
    "leaf_keys",
    "load_config",
    "parse_volume",
]
