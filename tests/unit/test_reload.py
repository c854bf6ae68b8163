"""What a reload changes at once and what waits for a restart (pure)."""

from __future__ import annotations

from typing import Any

from dagent import reload
from dagent.config import load_config


def _config(**settings: Any) -> Any:
    return load_config({"name": "a", **settings}, environ={}).config


def test_policy_labels_env_concurrency_and_log_level_change_at_once() -> None:
    old = _config()
    new = _config(concurrency=7, labels=["gpu"], log_level="DEBUG",
                  docker={"allow_privileged": True, "env": {"A": "1"}, "max_memory": "1g"})  # fmt: skip
    effective, waiting = reload.merge(old, new)
    assert waiting == []
    assert effective == new


def test_what_names_the_agent_its_source_or_its_daemon_waits_for_a_restart() -> None:
    old = _config()
    new = _config(name="b", source="prefect", api={"url": "http://x:4200/api", "work_pool": "p"},
                  docker={"base_url": "tcp://127.0.0.1:2375", "timeout": 5}, inbox={"path": "/elsewhere"},
                  health={"address": "127.0.0.1:9"})  # fmt: skip
    effective, waiting = reload.merge(old, new)
    assert effective == old
    assert set(waiting) == {"name", "source", "api.url", "api.work_pool", "docker.base_url", "docker.timeout",
                            "inbox.path", "health.address"}  # fmt: skip


def test_durations() -> None:
    import pytest

    from dagent.units import parse_duration

    assert [parse_duration(v) for v in ("90", "90s", "15m", "24h", "2d", 5, 0.5)] == [
        90,
        90,
        900,
        86400,
        172800,
        5,
        0.5,
    ]
    for bad in ("", "0", "-1s", "1w", "nan", True, float("inf"), "999999999999d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_duration("0", zero=True) == 0.0  # dagent gc --older-than 0
    with pytest.raises(ValueError):
        parse_duration("nan", zero=True)


def test_a_container_whose_host_name_is_its_id_is_told_apart_from_one_named_by_its_operator(
    monkeypatch: Any,
) -> None:
    from dagent import hostview

    cid = "0123456789ab" + "c" * 52
    line = f"660 640 254:1 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw\n"
    monkeypatch.setattr(hostview.socket, "gethostname", lambda: "0123456789ab")
    assert hostview.hostname_is_container_id(line)
    monkeypatch.setattr(hostview.socket, "gethostname", lambda: "agent-1")  # compose `hostname:`, --hostname
    assert not hostview.hostname_is_container_id(line)
    monkeypatch.setattr(hostview.socket, "gethostname", lambda: "0123")  # a chosen name that is a prefix
    assert not hostview.hostname_is_container_id(line)
    assert not hostview.hostname_is_container_id("22 1 0:21 / /proc rw - proc proc rw\n")


def test_docker_tls_verify_is_read_as_the_docker_cli_reads_it(tmp_path: Any) -> None:
    """Any value but empty turns TLS on, "0" included: never plain HTTP where the CLI would use TLS."""
    from dagent.dockerclient import tls_files

    for value in ("1", "0", "false", "yes"):
        config = load_config({}, environ={"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": value,
                                          "DOCKER_CERT_PATH": str(tmp_path)}).config  # fmt: skip
        assert config.docker.tls.enabled is True and tls_files(config) is not None, value
    unset = load_config({}, environ={"DOCKER_HOST": "tcp://127.0.0.1:2375", "DOCKER_TLS_VERIFY": ""}).config
    assert tls_files(unset) is None
