"""The agent's name where the host name is no name: a container whose host name is its own id."""

from __future__ import annotations

import logging

from dagent.config import AgentConfig
from dagent.config.loading import LoadedConfig


class StableName:
    """An agent in a container whose host name is its id would take a new default name at each re-creation
    and orphan what the old one left: there, the default is agent-<daemon id> (one agent per daemon)."""

    def __init__(self) -> None:
        self.name: str | None = None

    def __call__(self, loaded: LoadedConfig) -> AgentConfig:
        """The loaded configuration, its default name made stable where it must be."""
        from dagent.hostview import hostname_is_container_id

        config = loaded.config
        if loaded.sources.get("name") != "default" or config.source != "prefect" or not hostname_is_container_id():
            return config
        if self.name is None:
            from dagent.runtime import DockerRuntime

            runtime = DockerRuntime(config)
            try:
                daemon_id = str(runtime.client.info().get("ID") or "")
            finally:
                runtime.close()
            self.name = "agent-" + "".join(c for c in daemon_id.lower() if c.isalnum())[:12]
            logging.getLogger("dagent").info(
                "name: %s (this container's host name is its id, which changes when it is re-created; "
                "set name or DAGENT_NAME to choose)", self.name,
            )  # fmt: skip
        return config.model_copy(update={"name": self.name})
