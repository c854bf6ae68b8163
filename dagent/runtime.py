"""What dagent does on the Docker daemon: make a run's image present, create (or adopt), start, watch,
stop and remove its container. The session and its questions are daemon.py's, which this builds on."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import requests

from dagent import exits
from dagent.contracts import Outcome, RunHandle, RunResult, should_remove, utc_now
from dagent.daemon import DaemonSession
from dagent.daemon_faults import explain, is_transient, reason
from dagent.errors import DaemonError
from dagent.images import PullProgress, parse_image
from dagent.spec import LABEL_AGENT, LABEL_RUN_ID, ContainerSpec, RegistryLogin, container_name
from dagent.units import parse_time

if TYPE_CHECKING:
    from docker.models.containers import Container

log = logging.getLogger("dagent.runtime")

# Waits are cut into slices so a long run costs one idle request per slice, and a daemon hiccup
# mid-wait costs at most one slice.
WAIT_SLICE = 30.0


def _container_time(container: Container, key: str) -> str | None:
    value = (container.attrs or {}).get("State", {}).get(key)
    parsed = None if not value or value.startswith("0001-") else parse_time(value)
    return parsed.isoformat(timespec="milliseconds") if parsed else None


# The longest piece of a container's output passed on as one line; a longer line goes in pieces, so an
# output with no newline is never held whole in memory.
MAX_LINE = 64 << 10
# Seconds between two progress lines of one pull.
PULL_PROGRESS_EVERY = 5.0


class DockerRuntime(DaemonSession):
    """Creates, starts, watches and removes run containers on one daemon."""

    # --- images ----------------------------------------------------------------------------------

    def ensure_image(self, spec: ContainerSpec) -> None:
        """Make the image present as the pull policy says; a pull blocks, logging its progress."""
        import docker.errors

        present = True
        if spec.pull != "always":
            try:
                self._call(f"inspect image {spec.image}", lambda: self.client.images.get(spec.image))
            except DaemonError as e:
                if not isinstance(e.__cause__, docker.errors.ImageNotFound):
                    raise
                present = False
        if spec.pull == "always" or (spec.pull == "if-not-present" and not present):
            self.pull(spec.image, spec.registry_login)
        elif not present:
            reason = "docker.pull is never" if self.config.docker.pull == "never" else "its registry is not allowed"
            raise DaemonError(f"image {spec.image} is not present and is not pulled ({reason})")

    def pull(self, image: str, login: RegistryLogin | None = None) -> float:
        """Pull an image, logging progress; returns seconds taken."""
        ref = parse_image(image)
        if ref.digest:
            repository, tag = f"{ref.repository}@{ref.digest}", None
        else:
            repository, tag = ref.repository, ref.tag or "latest"
        auth = self._auth_for(ref.registry, login)
        started = time.monotonic()
        log.info("pulling %s", image)

        def pull_once() -> None:
            if auth is None:
                # A `docker login` (or a rotated credential helper token) since the last pull counts.
                self.client.api.reload_config()
            progress, last = PullProgress(), time.monotonic()
            for event in self.client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
                if "error" in event:
                    raise DaemonError(f"docker: pull {image}: {event['error']}")
                progress.add(event)
                if time.monotonic() - last >= PULL_PROGRESS_EVERY:
                    last = time.monotonic()
                    log.info("pull %s: %s", image, progress)

        self._call(f"pull {image}", pull_once)
        took = time.monotonic() - started
        log.info("pulled %s in %.1fs", image, took)
        return took

    def _auth_for(self, registry: str, login: RegistryLogin | None = None) -> dict[str, str] | None:
        # The run's own credentials (Prefect's registry_credentials) first, read for each pull; then
        # docker.registry_auth; None lets docker-py use ~/.docker/config.json, as the docker CLI would.
        if login is not None and login.registry == registry:
            return {"username": login.username, "password": login.password.get_secret_value()}
        for entry in self.config.docker.registry_auth:
            if entry.registry == registry:
                if entry.password is not None:
                    password = entry.password.get_secret_value()
                else:
                    assert entry.password_file is not None
                    try:
                        password = entry.password_file.read_text(encoding="utf-8").rstrip("\r\n")
                    except OSError as e:
                        raise DaemonError(
                            f"docker.registry_auth: cannot read {entry.password_file}: {e.strerror}"
                        ) from None
                return {"username": entry.username, "password": password}
        return None

    # --- containers ------------------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> tuple[Container, bool]:
        """Create the run's container, or adopt the one that already exists; (container, adopted)."""
        import docker.errors

        kwargs = spec.to_docker_kwargs()
        mine = {LABEL_AGENT: spec.agent, LABEL_RUN_ID: spec.run_id}

        def create_or_adopt() -> tuple[Container, bool]:
            # A run's container is known by its labels (agent and run id), whatever its name: one
            # made by an earlier try, or by an earlier version that named containers otherwise.
            labels = [f"{k}={v}" for k, v in mine.items()]
            for found in self.client.api.containers(all=True, filters={"label": labels}):
                return self.client.containers.get(found["Id"]), True
            # dagent-<id>, unless another agent on this daemon has a run of that id: then the name
            # that holds the agent too. A container in the way is never adopted.
            for name in (spec.name, container_name(spec.run_id, spec.agent)):
                try:
                    return self.client.containers.create(**{**kwargs, "name": name}), False
                except docker.errors.APIError as e:
                    if e.status_code != 409:
                        raise
                existing = self.client.containers.get(name)
                theirs = {k: existing.labels.get(k) for k in mine}
                if theirs == mine:
                    return existing, True  # made by a try whose answer was lost
                if not theirs[LABEL_AGENT]:
                    break  # not dagent's: an error, not a reason to pick another name
            raise DaemonError(
                f"docker: a container named {name} is in the way (agent {theirs[LABEL_AGENT] or 'none'}, "
                f"run {theirs[LABEL_RUN_ID] or 'none'}); not adopting or touching it"
            )

        container, adopted = self._call(f"create {spec.name}", create_or_adopt)
        if not adopted:
            # Only one network can be given at create; the others are joined before the start.
            for network in spec.networks:
                self._call(f"connect {spec.name} to {network}", partial(self.client.api.connect_container_to_network,
                                                                         container.id, network))  # fmt: skip
        if adopted:
            log.info("run %s: adopted existing container %s", spec.run_id, container.short_id)
        return container, adopted

    def start(self, container: Container) -> None:
        """Start a created container (no-op for one already running or finished)."""

        def start_once() -> None:
            # Looked at again on every try: a start whose answer was lost may have run the
            # container already, and starting an exited container would run it twice.
            container.reload()
            if container.status == "created":
                container.start()

        self._call(f"start {container.name}", start_once)

    def wait(self, container: Container, deadline: float, cancelled: Callable[[], bool] = lambda: False) -> int | None:
        """Wait for the container to exit: its exit code, or None when the deadline (monotonic) passed."""
        import docker.errors

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or cancelled():
                return None
            try:
                status = container.wait(timeout=min(remaining, WAIT_SLICE))
                return int(status.get("StatusCode", -1))
            except docker.errors.NotFound:
                raise DaemonError(f"docker: container {container.name} disappeared while running") from None
            except requests.exceptions.RequestException as e:
                if isinstance(e, docker.errors.APIError) and not is_transient(e):
                    raise DaemonError(f"docker: wait {container.name}: {explain(e)}") from None
                # A read timeout is the slice ending; anything else a daemon hiccup (a cut
                # connection, a restart). Either way the container's own state says what happened.
                if not isinstance(e, requests.exceptions.ReadTimeout) and "timed out" not in str(e).lower():
                    log.warning("wait %s: %s; checking again", container.name, reason(e))
                    time.sleep(min(1.0, max(remaining, 0)))

    def stop(self, container: Container, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        import docker.errors

        try:
            self._call(f"stop {container.name}", lambda: container.stop(timeout=round(grace)))
        except DaemonError as e:
            if not isinstance(e.__cause__, docker.errors.NotFound):
                raise

    def stream_logs(self, container: Container, on_line: Callable[[str], None]) -> threading.Thread:
        """Follow the container's output in a daemon thread, one call per line."""

        def follow() -> None:
            try:
                buffer = b""
                for chunk in container.logs(stream=True, follow=True):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        for start in range(0, max(len(line), 1), MAX_LINE):
                            on_line(line[start : start + MAX_LINE].decode("utf-8", "replace"))
                    while len(buffer) > MAX_LINE:  # output with no newline: passed on in pieces
                        on_line(buffer[:MAX_LINE].decode("utf-8", "replace"))
                        buffer = buffer[MAX_LINE:]
                if buffer:
                    on_line(buffer.decode("utf-8", "replace"))
            except Exception as e:  # a log stream must never take the run down with it
                log.debug("log stream of %s ended: %s", container.name, e)

        thread = threading.Thread(target=follow, name=f"logs-{container.name}", daemon=True)
        thread.start()
        return thread

    def prepare(self, spec: ContainerSpec) -> None:
        """Everything before the container exists: the image, pulled as the policy says."""
        self.ensure_image(spec)

    def launch(self, spec: ContainerSpec) -> Container:
        """Create (or adopt) the run's container and start it unless it already ran."""
        container, _ = self.create(spec)
        self.start(container)
        return container

    def watch(
        self,
        spec: ContainerSpec,
        container: Container,
        handle: RunHandle | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Wait for the container to end (deadline, cancellation), then clean up as keep_containers says."""
        handle = handle or RunHandle()  # its container is the caller's to set (the run's executor, before this)
        watched_from = utc_now()
        deadline = time.monotonic() + spec.timeout
        logs = self.stream_logs(container, on_line) if on_line else None
        exit_code = self.wait(container, deadline, handle.cancel.is_set)
        outcome: Outcome
        if exit_code is None:
            outcome = "cancelled" if handle.cancel.is_set() else "timed-out"
            log.warning("run %s: %s; stopping %s", spec.run_id, outcome, container.name)
            self.stop(container, spec.stop_grace)
            exit_code = self.wait(container, time.monotonic() + spec.stop_grace + 30)
        elif handle.cancel.is_set():
            outcome = "cancelled"
        else:
            outcome = "succeeded" if exit_code == 0 else "failed"
        if logs is not None:
            logs.join(timeout=5)
        with contextlib.suppress(DaemonError):
            self._call(f"inspect {container.name}", container.reload)
        started_at = _container_time(container, "StartedAt") or watched_from
        finished_at = _container_time(container, "FinishedAt") or utc_now()
        error = f"timed out after {spec.timeout:g}s" if outcome == "timed-out" else None
        why, last = (None, ()) if outcome in ("succeeded", "cancelled") else self._why(spec, container, exit_code)
        return RunResult.ended(spec.run_id, outcome, exit_code, container.id, started_at, finished_at, error, why, last)

    def _why(self, spec: ContainerSpec, container: Container, exit_code: int | None) -> tuple[str, tuple[str, ...]]:
        """How a failed container ended, and the last of its output (read only for runs that failed)."""
        attrs = container.attrs if isinstance(container.attrs, dict) else {}
        state = attrs.get("State") or {}
        why = exits.why(exit_code, state if isinstance(state, dict) else {}, spec.memory)
        try:
            output = self._call(
                f"logs {container.name}", partial(container.logs, tail=exits.TAIL_LINES, stdout=True, stderr=True)
            )
        except DaemonError as e:
            log.debug("run %s: could not read the end of its output: %s", spec.run_id, e)
            return why, ()
        secrets = [v.get_secret_value() for v in spec.secret_env.values()]
        if spec.registry_login is not None:
            secrets.append(spec.registry_login.password.get_secret_value())
        return why, exits.tail(output if isinstance(output, bytes) else b"", secrets)

    def finish(self, spec: ContainerSpec, result: RunResult) -> None:
        """Remove the container unless keep_containers keeps it; call after the result is reported."""
        if should_remove(spec.keep, result.outcome) and result.container_id:
            self.remove_id(result.container_id)

    def stop_id(self, container_id: str, grace: float) -> None:
        """SIGTERM a container by id, then SIGKILL after `grace` seconds (gone already is fine)."""
        import docker.errors

        try:
            self._call("stop container", partial(self.client.api.stop, container_id, timeout=round(grace)))
        except DaemonError as e:
            if not isinstance(e.__cause__, docker.errors.NotFound):
                raise

    def remove_id(self, container_id: str) -> None:
        """Remove a container by id (gone already is fine)."""
        import docker.errors

        try:
            self._call("remove container", partial(self.client.api.remove_container, container_id, force=True))
        except DaemonError as e:
            if not isinstance(e.__cause__, docker.errors.NotFound):
                raise

    def execute(self, spec: ContainerSpec, on_line: Callable[[str], None] | None = None) -> RunResult:
        """Run a spec to its end: image, create (or adopt), start, wait with deadline, clean up."""
        self.prepare(spec)
        container = self.launch(spec)
        result = self.watch(spec, container, on_line=on_line)
        self.finish(spec, result)
        return result
