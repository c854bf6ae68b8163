"""Loading: the effective configuration, where each value came from, and errors as one line each."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from pydantic import (
    BaseModel,
    ValidationError,
)

from dagent.config.compat_source import CompatEnvSettingsSource
from dagent.config.models import AgentConfig, Section
from dagent.config.pending import PendingSources, find_config_file, make_sources, pending_sources
from dagent.config.types import ENV_CONFIG, ENV_PREFIX, env_name, get_path
from dagent.errors import ConfigError

log = logging.getLogger("dagent.config")

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
    pending = make_sources(AgentConfig, cli, environ, path)
    token = pending_sources.set(pending)
    try:
        config = AgentConfig(**cli)
    except ValidationError as e:
        raise ConfigError(_error_lines(e, cli, pending, path)) from None
    finally:
        pending_sources.reset(token)
    loaded = LoadedConfig(config=config, sources=_provenance(cli, pending), path=path)
    _warn_exposed_secrets(loaded, pending)
    return loaded


def _warn_exposed_secrets(loaded: LoadedConfig, pending: PendingSources) -> None:
    """Say where a secret can be read by others: a flag (in the process list), a file others may read."""
    config = loaded.config
    if loaded.sources.get("api.token") == "cli":
        log.warning("--token is visible to every user in the process list (/proc/PID/cmdline); "
                    "use api.token_file or DAGENT_API__TOKEN")  # fmt: skip
    file_secrets = [
        key for key in ("api.token", "api.auth_string") if get_path(pending.toml(), tuple(key.split("."))) is not None
    ]
    auth = get_path(pending.toml(), ("docker", "registry_auth"))
    if isinstance(auth, list) and any(isinstance(a, Mapping) and a.get("password") is not None for a in auth):
        file_secrets.append("docker.registry_auth.password")
    if loaded.path is not None and file_secrets and _readable_by_others(loaded.path):
        log.warning("%s holds %s and is readable by other users; chmod 600 it",
                    loaded.path, ", ".join(file_secrets))  # fmt: skip
    for entry in config.docker.registry_auth:
        if entry.password_file is not None and _readable_by_others(entry.password_file):
            log.warning("docker.registry_auth.password_file %s is readable by other users; chmod 600 it",
                        entry.password_file)  # fmt: skip


def _readable_by_others(path: Path) -> bool:
    try:
        mode = path.expanduser().stat().st_mode
    except (OSError, RuntimeError):
        return False  # read (and reported) where it is used
    return os.name == "posix" and bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def _layers(cli: Mapping[str, Any], pending: PendingSources) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield "cli", cli
    yield "env", pending.env()
    yield "compat", pending.compat()
    yield "toml", pending.toml()


def _provenance(cli: Mapping[str, Any], pending: PendingSources) -> dict[str, str]:
    assert isinstance(pending.compat, CompatEnvSettingsSource)
    sources: dict[str, str] = {}
    layers = list(_layers(cli, pending))
    for dotted in leaf_keys():
        origin = "default"
        for name, layer in layers:
            if get_path(layer, tuple(dotted.split("."))) is not None:
                origin = "env" if name == "compat" else name
                break
        sources[dotted] = origin
    # The token's origin is named exactly (docs/configuration.md), the others by kind.
    token_origin = sources["api.token"]
    if token_origin == "env" and get_path(pending.env(), ("api", "token")) is not None:
        sources["api.token"] = "env:DAGENT_API__TOKEN"
    elif token_origin == "env":
        sources["api.token"] = pending.compat.token_source or "env"
    return sources


def leaf_keys(model: type[BaseModel] = AgentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration, sections flattened."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            keys.extend(leaf_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def check_env_names(environ: Mapping[str, str]) -> None:
    """Refuse DAGENT_* variables that name no setting, suggesting the nearest one."""
    known = {env_name(k) for k in leaf_keys()} | {ENV_CONFIG}
    known |= {env_name(name) for name, f in AgentConfig.model_fields.items() if is_section(f.annotation)}
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            hint = _closest(upper, known, 0.6)
            extra = f"; did you mean {hint[0]}?" if hint else ""
            if upper.startswith(("DAGENT_DOCKER__ENV__", "DAGENT_DOCKER__LABELS__")):
                table = upper.split("__")[1].lower()
                extra = f'; set docker.{table} as JSON: {env_name("docker." + table)}=\'{{"KEY": "value"}}\''
            lines.append(f"env {name}: unknown setting{extra}")
    if lines:
        raise ConfigError(lines)


def is_section(annotation: Any) -> TypeGuard[type[Section]]:
    return isinstance(annotation, type) and issubclass(annotation, Section)


# --- error messages ----------------------------------------------------------------------------

# Keys whose values are never echoed in an error: credentials, and environment values (a run's
# or the agent's env often carries a password).
_SECRET_PARTS = ("token", "auth_string", "password", "env")


def _error_lines(
    error: ValidationError, cli: Mapping[str, Any], pending: PendingSources, path: Path | None
) -> list[str]:
    assert isinstance(pending.compat, CompatEnvSettingsSource)
    compat = pending.compat
    lines = []
    layers = list(_layers(cli, pending))
    leaves = set(leaf_keys())
    for item in error.errors(include_url=False):
        loc = tuple(str(p) for p in item["loc"])
        dotted, message = describe_error(item, AgentConfig)
        # List indices and dict-key markers are not keys; the first part always is (even "0").
        key_loc = loc[:1] + tuple(p for p in loc[1:] if not p.isdigit() and p != "[key]")
        # The setting is the longest prefix that is a key (docker.tls.verify; docker.env of docker.env.X).
        key_loc = next((key_loc[:n] for n in (3, 2) if ".".join(key_loc[:n]) in leaves), key_loc[:2])
        origin = "defaults"
        for name, layer in layers:
            if get_path(layer, key_loc) is None:
                continue
            if ".".join(key_loc) not in leaves:  # a whole table's rule (docker.tls): name a key set in it
                inner = sorted(k for k in leaves if k.startswith(".".join(key_loc) + "."))
                set_in_layer = [tuple(k.split(".")) for k in inner if get_path(layer, tuple(k.split("."))) is not None]
                key_loc = set_in_layer[0] if set_in_layer else key_loc
            origin = {
                "cli": "command line",
                "env": f"env {env_name('.'.join(key_loc))}",
                "compat": f"env {compat.env_names.get('.'.join(key_loc), '')}".rstrip(),
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
        hint = _closest(loc[-1], node.model_fields, 0.7)
        if not hint and model is AgentConfig:  # maybe a key of another section, e.g. docker.concurrency
            by_name = {k.rsplit(".", 1)[-1]: k for k in leaf_keys()}
            hint = [by_name[m] for m in _closest(loc[-1], by_name, 0.7)]
        return dotted, "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
    msg = msg.removeprefix("Value error, ")
    secret = any(s in p for p in loc for s in _SECRET_PARTS)
    value = item.get("input")
    if not secret and kind not in ("value_error", "assertion_error") and not isinstance(value, (dict, list)):
        shown = repr(value)
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return dotted, msg


def _closest(word: str, choices: Iterable[str], cutoff: float) -> list[str]:
    """The nearest of choices to a misspelt word, if any is near enough."""
    import difflib  # only a misspelt key needs it: an agent that starts cleanly never loads it

    return difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
