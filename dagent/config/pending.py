"""The sources one load reads, made once and handed to AgentConfig; which TOML file that is."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
)

from dagent.config.compat_source import CompatEnvSettingsSource
from dagent.config.env_source import DagentEnvSettingsSource
from dagent.config.toml_source import TomlFileSettingsSource
from dagent.config.types import DEFAULT_CONFIG_FILE, ENV_CONFIG
from dagent.errors import ConfigError


@dataclass(frozen=True)
class PendingSources:
    env: PydanticBaseSettingsSource
    compat: PydanticBaseSettingsSource
    toml: PydanticBaseSettingsSource


# load_config hands its sources to settings_customise_sources through this, so each is read once.
pending_sources: ContextVar[PendingSources | None] = ContextVar("dagent_pending_sources", default=None)


def make_sources(
    settings_cls: type[BaseSettings], cli: Mapping[str, Any], environ: Mapping[str, str], path: Path | None
) -> PendingSources:
    env = DagentEnvSettingsSource(settings_cls, environ)
    toml = TomlFileSettingsSource(settings_cls, path)
    compat = CompatEnvSettingsSource(settings_cls, environ, (cli, env), toml)
    return PendingSources(env=env, compat=compat, toml=toml)


def find_config_file(explicit: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    """The TOML file to read: `--config`, else $DAGENT_CONFIG, else ./agent.toml if present."""
    for given, origin in ((explicit, "--config"), (environ.get(ENV_CONFIG), ENV_CONFIG)):
        if given:
            try:
                path = Path(given).expanduser()
            except RuntimeError:  # ~user of no such user, or ~ with no home
                raise ConfigError(f"{given!r}: cannot expand ~ ({origin})") from None
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found ({origin})")
            return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None
