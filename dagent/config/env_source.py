"""The DAGENT_* environment variables, as a pydantic-settings source."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsError,
)

from dagent.config.types import ENV_PREFIX, TABLE_KEYS, env_name, get_path, set_path, table_from_text
from dagent.errors import ConfigError


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
                value = get_path(data, path)
                if isinstance(value, str):
                    try:
                        set_path(data, list(path), table_from_text(value))
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
