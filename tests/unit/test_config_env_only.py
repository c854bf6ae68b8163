"""A configuration from the environment alone is complete and valid (the CI user's case)."""

from __future__ import annotations

import pytest

from dagent.config import load_config


def test_env_only_gives_a_complete_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists and tables come from JSON or comma lists; scalars from text; no file is read."""
    env = {
        "DAGENT_NAME": "ci-agent",
        "DAGENT_LABELS": '["a","b"]',
        "DAGENT_SOURCE": "prefect",
        "DAGENT_MAX_POLLS": "3",
        "DAGENT_POLL_INTERVAL": "0.5",
        "DAGENT_CONCURRENCY": "2",
        "DAGENT_SHOW_FLOW_LOGS": "true",
        "DAGENT_LOG_FORMAT": "json",
        "DAGENT_API__URL": "http://127.0.0.1:4200/api",
        "DAGENT_API__TOKEN": "tok",
        "DAGENT_API__WORK_POOL": "pool",
        "DAGENT_API__WORK_QUEUES": "q1, q2",
        "DAGENT_API__SEND_AGENT_LOGS": "false",
        "DAGENT_DOCKER__BASE_URL": "tcp://127.0.0.1:2375",
        "DAGENT_DOCKER__PULL": "never",
        "DAGENT_DOCKER__REGISTRY_ALLOW_LIST": '["Registry-1.Docker.IO","127.0.0.1:5000"]',
        "DAGENT_DOCKER__VOLUMES": '["/srv/data:/data:ro"]',
        "DAGENT_DOCKER__NETWORK": "flows",
        "DAGENT_DOCKER__ENV": '{"K":"V"}',
        "DAGENT_DOCKER__LABELS": '{"team":"x"}',
        "DAGENT_DOCKER__DOCKER_INTERFACE": "0",
        "DAGENT_DOCKER__MAX_MEMORY": "2g",
        "DAGENT_HEALTH__ADDRESS": "127.0.0.1:8080",
        "DAGENT_INBOX__PATH": "/var/lib/dagent/runs",
        "DAGENT_RETRY__ATTEMPTS": "7",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = load_config()
    c = loaded.config
    assert loaded.path is None
    assert c.name == "ci-agent" and c.labels == ["a", "b"] and c.source == "prefect"
    assert (c.max_polls, c.poll_interval, c.concurrency, c.show_flow_logs, c.log_format) == (3, 0.5, 2, True, "json")
    assert c.api.url == "http://127.0.0.1:4200/api" and c.api.work_queues == ["q1", "q2"]
    assert c.api.token is not None and c.api.token.get_secret_value() == "tok"
    assert c.api.send_agent_logs is False and c.api.work_pool == "pool"
    assert c.docker.registry_allow_list == ["docker.io", "127.0.0.1:5000"]
    assert [str(v) for v in c.docker.volumes] == ["/srv/data:/data:ro"]
    assert c.docker.env == {"K": "V"} and c.docker.labels == {"team": "x"}
    assert c.docker.docker_interface is False and c.docker.max_memory == 2 * 1024**3
    assert c.health.address == "127.0.0.1:8080" and str(c.inbox.path) == "/var/lib/dagent/runs"
    assert c.retry.attempts == 7 and c.docker.pull == "never" and c.docker.network == "flows"
    assert set(loaded.sources.values()) <= {"env", "default", "env:DAGENT_API__TOKEN"}
    assert loaded.sources["docker.env"] == "env"
