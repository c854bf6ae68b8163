"""The Docker daemon's session: the one connection (docker-py, with tenacity retries on transient faults),
and what dagent asks the daemon about the host and its containers. runtime.py adds what it does with them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

import requests

from dagent import dockerclient, retry
from dagent.config import AgentConfig
from dagent.contracts import ContainerInfo, DaemonFacts
from dagent.daemon_faults import explain, is_transient, reason
from dagent.errors import DaemonError
from dagent.hostview import socket_path, view_error
from dagent.images import names_reference
from dagent.policy import VolumeFacts
from dagent.spec import LABEL_AGENT, LABEL_RUN_ID
from dagent.units import parse_time

if TYPE_CHECKING:
    import docker

log = logging.getLogger("dagent.runtime")

# A ping's answer this fresh is the daemon's answer now.
PING_FRESH = 1.0


class DaemonSession:
    """One daemon: its client made on first use, every call through `_call`, and the questions about it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.base_url = config.docker.base_url
        self._client: docker.DockerClient | None = None
        self._health: docker.APIClient | None = None
        self._health_lock = threading.Lock()  # the health server and the agent loop both ping
        self._pinged: tuple[float, bool] | None = None  # (when, answer) of the last ping
        self._lock = threading.Lock()

    def reconfigure(self, config: AgentConfig) -> None:
        """A reload's live keys (registry credentials, the host-view check); the connection is kept."""
        self.config = config

    # --- plumbing --------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one daemon operation with retries; translate what is left into DaemonError."""
        import docker.errors

        try:
            return retry.call(self.config.retry, is_transient, what, fn)
        except DaemonError:
            raise
        except docker.errors.APIError as e:
            raise DaemonError(f"docker: {what}: {explain(e)}") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise DaemonError(
                f"docker: {what}: cannot reach the daemon at {self.base_url} (docker.base_url): "
                f"{reason(e, sent_no_client_cert=self._sends_no_client_cert())}"
            ) from e

    def _sends_no_client_cert(self) -> bool:
        try:
            files = dockerclient.tls_files(self.config)
        except Exception:  # only words an error message: never raise over the error being told
            return False
        return files is not None and files["client_cert"] is None

    @property
    def client(self) -> docker.DockerClient:
        """The docker-py client, created on first use with the daemon's API version."""
        with self._lock:
            if self._client is None:
                dockerclient.import_docker(self.config)  # before _call imports docker.errors, so it decides how
                self._client = self._call("connect", lambda: dockerclient.client(self.config))
            return self._client

    def verify(self) -> dict[str, Any]:
        """Check the daemon answers (ping, version); DaemonError naming docker.base_url if not."""
        client = self.client
        self._call("ping", client.ping)
        version: dict[str, Any] = self._call("version", client.version)
        return version

    def daemon_facts(self) -> DaemonFacts:
        """Where the daemon keeps its state, and whether the agent shares its view of the host."""
        info: dict[str, Any] = self._call("info", self.client.info)
        root = info.get("DockerRootDir")
        return DaemonFacts(
            data_root=root if isinstance(root, str) and root.startswith("/") else None,
            socket_path=socket_path(self.base_url),
            view_error=view_error(self.base_url, self.config.docker.verify_host_view),
        )

    def network_driver(self, name: str) -> str | None:
        """The driver of the network Docker resolves `name` to (a name, an id or a prefix); None if none."""
        import docker.errors

        try:
            network = self._call(f"inspect network {name!r}", partial(self.client.api.inspect_network, name))
        except DaemonError as e:
            if isinstance(e.__cause__, docker.errors.NotFound):
                return None
            raise
        driver = network.get("Driver") if isinstance(network, dict) else None
        return str(driver) if driver else None

    def volume(self, name: str) -> VolumeFacts | None:
        """The named volume's driver and options as the daemon holds them; None when it does not exist."""
        import docker.errors

        try:
            volume = self._call(f"inspect volume {name!r}", partial(self.client.api.inspect_volume, name))
        except DaemonError as e:
            if isinstance(e.__cause__, docker.errors.NotFound):
                return None  # it does not exist yet: Docker makes an empty one
            raise
        if not isinstance(volume, dict):
            raise DaemonError(f"docker: inspect volume {name!r}: unexpected answer")
        options = volume.get("Options") or {}
        users = self._call(
            f"list containers using volume {name!r}",
            partial(self.client.api.containers, all=True, filters={"volume": name}),
        )
        others = [
            str((c.get("Names") or [c.get("Id", "?")])[0]).lstrip("/")
            for c in users or []
            if (c.get("Labels") or {}).get(LABEL_AGENT) != self.config.name
        ]
        return VolumeFacts(
            driver=str(volume.get("Driver") or ""),
            options={str(k): str(v) for k, v in options.items()} if isinstance(options, dict) else {"?": "?"},
            others=tuple(others),
        )

    def image_names(self, reference: str) -> tuple[str, ...] | None:
        """The image's names when the daemon resolves `reference` as an image ID; None when as a name, or absent."""
        import docker.errors

        try:
            image = self._call(f"inspect image {reference}", partial(self.client.api.inspect_image, reference))
        except DaemonError as e:
            if isinstance(e.__cause__, docker.errors.NotFound):
                return None  # not present: a pull takes the reference as a name
            raise
        if not isinstance(image, dict):
            raise DaemonError(f"docker: inspect image {reference}: unexpected answer")
        names = [n for n in (image.get("RepoTags") or []) + (image.get("RepoDigests") or []) if isinstance(n, str)]
        names = [n for n in names if not n.startswith("<none>")]
        return None if names_reference(names, reference) else tuple(names)

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()

    def ping(self) -> bool:
        """True when the daemon answers a ping: one try, 2 s at most; an answer under PING_FRESH old is reused,
        so a flood of health checks against a slow daemon waits for one ping, not one each."""
        with self._health_lock:
            if self._pinged is not None and time.monotonic() - self._pinged[0] < PING_FRESH:
                return self._pinged[1]
            try:
                if self._health is None:
                    self._health = dockerclient.api_client(self.config, self.client.api.api_version, timeout=2)
                up = bool(self._health.ping())
            except Exception:
                up = False
            self._pinged = (time.monotonic(), up)
            return up

    # --- listing and clean-up --------------------------------------------------------------------

    def managed(self, agent: str | None = None, run_id: str | None = None) -> list[ContainerInfo]:
        """Containers labelled by dagent (this agent's when `agent` is given)."""
        import docker.errors

        filters = [f"{LABEL_AGENT}={agent}" if agent else LABEL_AGENT]
        if run_id:
            filters.append(f"{LABEL_RUN_ID}={run_id}")
        raw = self._call("list containers", lambda: self.client.api.containers(all=True, filters={"label": filters}))
        infos = []
        for item in raw:
            try:
                detail = self._call("inspect container", partial(self.client.api.inspect_container, item["Id"]))
            except DaemonError as e:
                if isinstance(e.__cause__, docker.errors.NotFound):
                    continue  # removed between the list and its inspect: not ours to manage any more
                raise
            state = detail.get("State", {})
            finished = state.get("FinishedAt")
            infos.append(
                ContainerInfo(
                    id=item["Id"],
                    name=item["Names"][0].lstrip("/") if item.get("Names") else item["Id"][:12],
                    run_id=item.get("Labels", {}).get(LABEL_RUN_ID, ""),
                    image=item.get("Image", ""),
                    state=state.get("Status", item.get("State", "")),
                    exit_code=state.get("ExitCode") if state.get("Status") == "exited" else None,
                    created_at=detail.get("Created", ""),
                    finished_at=None if not finished or finished.startswith("0001-") else finished,
                    labels=item.get("Labels", {}),
                )
            )
        return infos

    def container_ids(self) -> frozenset[str]:
        """Ids of every container the daemon has, running or not, dagent's or not."""
        raw = self._call("list containers", lambda: self.client.api.containers(all=True, quiet=True))
        return frozenset(str(item["Id"]) for item in raw)

    def gc(self, agent: str, older_than: float, busy: Collection[str] = ()) -> Iterator[ContainerInfo]:
        """Remove this agent's finished containers that finished more than `older_than` seconds ago.

        `busy`: run ids still being reported, whose containers are not yet the agent's to remove.
        """
        now = datetime.now(timezone.utc)
        for info in self.managed(agent):
            if info.state not in ("exited", "dead") or info.run_id in busy:
                continue
            finished = (parse_time(info.finished_at) if info.finished_at else None) or now
            if (now - finished).total_seconds() >= older_than:
                self._call(f"remove {info.name}", partial(self.client.api.remove_container, info.id, force=True))
                yield info
