"""The TOML file, as a pydantic-settings source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    TomlConfigSettingsSource,
)

from dagent._compat import tomllib
from dagent.errors import ConfigError


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
                table[key] = str(base / _expanded(table[key]))
        auths = data.get("docker", {}).get("registry_auth") if isinstance(data.get("docker"), dict) else None
        for auth in auths if isinstance(auths, list) else []:
            if isinstance(auth, dict) and isinstance(auth.get("password_file"), str):
                auth["password_file"] = str(base / _expanded(auth["password_file"]))
        return data


def _expanded(given: str) -> Path:
    """~ expanded; left as given when it cannot be (the path's validator then says why, with its key)."""
    try:
        return Path(given).expanduser()
    except RuntimeError:
        return Path(given)
