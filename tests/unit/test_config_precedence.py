"""Precedence: CLI flags > environment > TOML file > defaults, for a key of every section."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dagent.config import load_config

# key -> (a value per source, how the env spells it, how the flag spells it)
KEYS: dict[str, dict[str, Any]] = {
    "name": {"toml": "t", "env": "e", "cli": "c", "default": "agent"},
    "api.work_pool": {"toml": "tp", "env": "ep", "cli": "cp", "default": "dagent"},
    "docker.network": {"toml": "tn", "env": "en", "cli": "cn", "default": None},
    "health.address": {"toml": "127.0.0.1:1", "env": "127.0.0.1:2", "cli": "127.0.0.1:3", "default": None},
    "inbox.path": {"toml": "/t", "env": "/e", "cli": "/c", "default": Path("runs")},
    "retry.attempts": {"toml": 2, "env": 3, "cli": 4, "default": 5},
}
SOURCES = ("default", "toml", "env", "cli")


def _toml_line(key: str, value: Any) -> str:
    section, _, leaf = key.rpartition(".")
    literal = f'"{value}"' if isinstance(value, str) else str(value)
    return (f"[{section}]\n" if section else "") + f"{leaf} = {literal}\n"


def _nested(key: str, value: Any) -> dict[str, Any]:
    *parents, leaf = key.split(".")
    node: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        node = {part: node}
    return node


def _get(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("key", list(KEYS))
@pytest.mark.parametrize(("lower", "higher"), list(itertools.combinations(SOURCES, 2)))
def test_higher_source_wins(
    key: str, lower: str, higher: str, write_toml: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting a key in two sources: the higher one wins and is named as the source."""
    values = KEYS[key]
    path = None
    cli: dict[str, Any] = {}
    for source in (lower, higher):
        if source == "toml":
            path = write_toml(_toml_line(key, values["toml"]))
        elif source == "env":
            monkeypatch.setenv("DAGENT_" + key.replace(".", "__").upper(), str(values["env"]))
        elif source == "cli":
            cli = _nested(key, values["cli"])
    loaded = load_config(cli, path)
    expected = values[higher]
    got = _get(loaded.config, key)
    assert (str(got) if isinstance(got, Path) else got) == (str(expected) if isinstance(expected, Path) else expected)
    assert loaded.sources[key] == higher


def test_lists_replace(write_toml: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A list given in a higher source replaces the lower one instead of extending it."""
    path = write_toml('labels = ["a", "b"]\n[docker]\nvolumes = ["/srv:/srv"]\n')
    monkeypatch.setenv("DAGENT_LABELS", '["c"]')
    loaded = load_config({"docker": {"volumes": ["/x:/y:ro"]}}, path)
    assert loaded.config.labels == ["c"]
    assert [str(v) for v in loaded.config.docker.volumes] == ["/x:/y:ro"]


def test_env_and_labels_tables_merge_key_by_key(
    write_toml: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker.env and docker.labels merge across sources; the higher source wins per key."""
    path = write_toml('[docker]\nenv = {A = "toml", B = "toml"}\nlabels = {team = "t", tier = "t"}\n')
    monkeypatch.setenv("DAGENT_DOCKER__ENV", '{"B": "env", "C": "env"}')
    monkeypatch.setenv("DAGENT_DOCKER__LABELS", '{"tier": "e"}')
    loaded = load_config({"docker": {"env": {"C": "cli", "D": "cli"}}}, path)
    assert loaded.config.docker.env == {"A": "toml", "B": "env", "C": "cli", "D": "cli"}
    assert loaded.config.docker.labels == {"team": "t", "tier": "e"}


def test_compat_env_names_sit_below_dagent_names(
    monkeypatch: pytest.MonkeyPatch, write_toml: Callable[..., Path]
) -> None:
    """PREFECT_API_URL, DOCKER_HOST and PREFECT__CLOUD__AGENT__NAME beat the file, lose to DAGENT_*."""
    path = write_toml('name = "file"\n[api]\nurl = "http://file/api"\n[docker]\nbase_url = "tcp://file:2375"\n')
    monkeypatch.setenv("PREFECT_API_URL", "http://compat:4200/api")
    monkeypatch.setenv("DOCKER_HOST", "tcp://compat:2375")
    monkeypatch.setenv("PREFECT__CLOUD__AGENT__NAME", "compat")
    loaded = load_config({}, path)
    assert (loaded.config.api.url, loaded.config.docker.base_url, loaded.config.name) == (
        "http://compat:4200/api",
        "tcp://compat:2375",
        "compat",
    )
    assert loaded.sources["api.url"] == "env"
    monkeypatch.setenv("DAGENT_API__URL", "http://dagent/api")
    monkeypatch.setenv("DAGENT_DOCKER__BASE_URL", "unix:///dagent.sock")
    monkeypatch.setenv("DAGENT_NAME", "dagent")
    loaded = load_config({}, path)
    assert (loaded.config.api.url, loaded.config.docker.base_url, loaded.config.name) == (
        "http://dagent/api",
        "unix:///dagent.sock",
        "dagent",
    )


def test_config_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_toml: Callable[..., Path]) -> None:
    """--config, then $DAGENT_CONFIG, then ./agent.toml, else defaults only."""
    assert load_config().path is None
    write_toml('name = "cwd"\n')
    assert load_config().config.name == "cwd"
    other = write_toml('name = "envfile"\n', "other.toml")
    monkeypatch.setenv("DAGENT_CONFIG", str(other))
    assert load_config().config.name == "envfile"
    flag = write_toml('name = "flag"\n', "flag.toml")
    assert load_config({}, flag).config.name == "flag"


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path) -> None:
    """inbox.path and api.token_file in a TOML file resolve against the file's directory."""
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "token").write_text("tok\n")
    (sub / "token").chmod(0o600)
    path = sub / "agent.toml"
    path.write_text('[inbox]\npath = "runs"\n[api]\ntoken_file = "token"\n')
    config = load_config({}, path).config
    assert config.inbox.path == sub.resolve() / "runs"
    assert load_config().config.inbox.path == tmp_path / "runs"
    assert config.api.token is not None and config.api.token.get_secret_value() == "tok"


def test_poll_interval_default_depends_on_source() -> None:
    """Unset poll_interval is 1 s for the inbox and 10 s for Prefect."""
    assert load_config().config.effective_poll_interval == 1.0
    assert load_config({"source": "prefect"}).config.effective_poll_interval == 10.0
    assert load_config({"source": "prefect", "poll_interval": 2.5}).config.effective_poll_interval == 2.5
