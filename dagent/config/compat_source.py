"""Other tools' environment names and api.token_file, as a pydantic-settings source."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
)

from dagent.config.toml_source import TomlFileSettingsSource
from dagent.config.types import COMPAT_ENV, TOKEN_ENV, env_name, get_path, set_path
from dagent.errors import ConfigError

log = logging.getLogger("dagent.config")


class CompatEnvSettingsSource(InitSettingsSource):
    """Other tools' env names (PREFECT_*, DOCKER_HOST) and the token from api.token_file.

    It sits between DAGENT_* and the TOML file (docs/configuration.md, "Sources").
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
                # As the Docker CLI and docker-py read it: any value but empty turns TLS on ("0" too).
                value = "true" if name == "DOCKER_TLS_VERIFY" else environ[name]
                set_path(data, dotted.split("."), value)
                self.env_names[dotted] = name
        for name in TOKEN_ENV:
            if environ.get(name):
                set_path(data, ["api", "token"], environ[name])
                self.token_source, self.env_names["api.token"] = f"env:{name}", name
                break
        layers = (("command line", cli), (f"env {env_name('api.token_file')}", env()), (str(toml.path), toml.toml_data))
        found = [(origin, v) for origin, layer in layers if (v := get_path(layer, ("api", "token_file"))) is not None]
        if found:
            origin, token_file = found[0]
            # Read even when a higher token wins: a broken token_file is a config mistake either way.
            try:
                token = read_token_file(Path(str(token_file)))
            except ConfigError as e:
                raise ConfigError(f"{origin}: {e}") from None
            if self.token_source is None:
                set_path(data, ["api", "token"], token)
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
    except RuntimeError:  # ~user of no such user, or ~ with no home
        raise ConfigError(f"api.token_file: {str(path)[:60]!r}: cannot expand ~ (no such user or home)") from None
    token = text.rstrip("\r\n")
    if not token.strip():
        raise ConfigError(f"api.token_file: {path} is empty")
    if "\n" in token:
        raise ConfigError(f"api.token_file: {path} holds more than one line")
    if os.name == "posix" and mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("api.token_file %s is readable by other users; chmod 600 it", path)
    return token
