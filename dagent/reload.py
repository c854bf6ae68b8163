"""What a configuration reload (SIGHUP) may change in a running agent, and what takes a restart (pure)."""

from __future__ import annotations

from typing import Any

from dagent.config import AgentConfig
from dagent.config.loading import leaf_keys

# Changed on the fly: what runs may ask for and become (policy, env, labels, volumes, ...), how many
# run at once, what is logged. Everything else names the agent, its source or its daemon: a restart.
LIVE_TOP = ("labels", "concurrency", "log_level", "show_flow_logs")
RESTART_DOCKER = ("base_url", "tls", "timeout")


def merge(old: AgentConfig, new: AgentConfig) -> tuple[AgentConfig, list[str]]:
    """The configuration to run with after a reload, and the changed keys that wait for a restart."""
    docker = new.docker.model_copy(update={k: getattr(old.docker, k) for k in RESTART_DOCKER})
    effective = old.model_copy(update={**{k: getattr(new, k) for k in LIVE_TOP}, "docker": docker})
    waiting = [key for key in leaf_keys() if _get(new, key) != _get(effective, key)]
    return effective, waiting


def changed(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The keys whose values differ."""
    return [key for key in leaf_keys() if _get(old, key) != _get(new, key)]


def _get(config: AgentConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
