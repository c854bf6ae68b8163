"""Property: any valid configuration survives `config show --json` → file → load unchanged."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagent.cli import main
from dagent.config import load_config

_word = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum()
)
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
_item = _text.filter(lambda s: s.strip() != "")  # list items may not be blank
_env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_abs_path = st.lists(_word, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
_volume = st.tuples(st.one_of(_abs_path, _word), _abs_path, st.sampled_from(["", ":ro", ":rw"])).map(
    lambda t: f"{t[0]}:{t[1]}{t[2]}"
)
_registry = st.tuples(st.lists(_word, min_size=1, max_size=3), st.one_of(st.none(), st.integers(1, 65535))).map(
    lambda t: ".".join(t[0]) + (f":{t[1]}" if t[1] else "")
)
_seconds = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(None), strategy)


_config = st.fixed_dictionaries(
    {},
    optional={
        "name": _word,
        "labels": st.lists(_item, max_size=4),
        "source": st.sampled_from(["inbox", "prefect"]),
        "max_polls": st.integers(1, 10**6),
        "poll_interval": _seconds,
        "concurrency": st.integers(1, 256),
        "show_flow_logs": st.booleans(),
        "log_format": st.sampled_from(["text", "json"]),
        "api": st.fixed_dictionaries(
            {},
            optional={
                "url": st.sampled_from(["http://127.0.0.1:4200/api", "https://api.prefect.cloud/api/accounts/a"]),
                "work_pool": _text,
                "work_queues": st.lists(_item, max_size=3),
                "send_agent_logs": st.booleans(),
                "heartbeat_interval": _seconds,
            },
        ),
        "docker": st.fixed_dictionaries(
            {},
            optional={
                "base_url": st.sampled_from(["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "ssh://u@h"]),
                "pull": st.sampled_from(["if-not-present", "always", "never"]),
                "registry_allow_list": st.lists(_registry, max_size=3),
                "volumes": st.lists(_volume, max_size=3),
                "network": _word,
                "env": st.dictionaries(_env_name, _text, max_size=3),
                "labels": st.dictionaries(_word, _text, max_size=3),
                "docker_interface": st.booleans(),
                "allowed_host_paths": st.lists(_abs_path, max_size=2),
                "allowed_capabilities": st.lists(st.sampled_from(["NET_ADMIN", "SYS_PTRACE"]), max_size=2),
                "max_cpus": st.floats(min_value=0.1, max_value=64),
                "max_memory": st.integers(6 * 2**20, 2**40),
            },
        ),
        "health": st.fixed_dictionaries({"address": st.integers(1, 65535).map(lambda p: f"127.0.0.1:{p}")}),
        "inbox": st.fixed_dictionaries({"path": _abs_path}),
        "retry": st.fixed_dictionaries({"attempts": st.integers(1, 20)}),
    },
)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_config)
def test_show_json_round_trips(data: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    """Load a generated file, print it with `config show --json`, load that output: same config."""
    first = tmp_path / "first.toml"
    first.write_text(tomli_w.dumps(data))
    original = load_config({}, first).config
    assert main(["config", "show", "--json", "-c", str(first)]) == 0
    shown = json.loads(capsys.readouterr().out)
    second = tmp_path / "second.toml"
    second.write_text(tomli_w.dumps(_drop_nulls(shown["config"])))
    assert load_config({}, second).config == original


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_config)
def test_show_text_is_a_valid_agent_toml(data: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    """`config show` (text) prints dotted TOML that loads back to the same configuration."""
    first = tmp_path / "first.toml"
    first.write_text(tomli_w.dumps(data))
    original = load_config({}, first).config
    assert main(["config", "show", "-c", str(first)]) == 0
    second = tmp_path / "second.toml"
    second.write_text(capsys.readouterr().out)
    assert load_config({}, second).config == original
