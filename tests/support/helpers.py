"""Helpers shared by the test suites (test modules never import each other): host facts for pure
policy tests, docker-py's own request builder as an oracle, running as `nobody`, and `dagent` run as
a user runs it (a subprocess with its own agent name, config and work directory).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from dagent.config import DockerConfig
from dagent.hostview import DAEMON_PATHS
from dagent.policy import SENSITIVE_PATHS, HostFacts, device_host, run_host_paths
from dagent.runs import RunRequest
from tests.support import REPO

# --- pure tests: host facts and docker-py's request ----------------------------------------------


def lexical_facts(docker: DockerConfig, run: RunRequest, **overrides: Any) -> HostFacts:
    """The facts of a host with no symbolic links, where the agent shares the daemon's view."""
    paths = [*run_host_paths(run), *(device_host(d) for d in docker.allowed_devices)]
    facts: dict[str, Any] = {
        "resolved": {p: posixpath.normpath(p) for p in paths},
        "allowed_roots": tuple(posixpath.normpath(r) for r in docker.allowed_host_paths),
        "protected": (*SENSITIVE_PATHS, *DAEMON_PATHS),
        "view_error": None,
        "volumes": {m.source: None for m in run.volumes if not m.is_bind},  # none made yet: Docker makes them
    }
    return HostFacts(**{**facts, **overrides})


def docker_request(kwargs: dict[str, Any], version: str = "1.41") -> dict[str, Any]:
    """The create-container body docker-py builds from `containers.create` kwargs, built by docker-py itself."""
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig

    args = _create_container_args({**kwargs, "version": version})
    args.pop("name", None)
    args.pop("use_config_proxy", None)  # APIClient.create_container's own argument, not the body's
    args.setdefault("command", None)
    return dict(ContainerConfig(version, **args))


# --- a Prefect API stand-in -----------------------------------------------------------------------


class StubAPI:
    """An HTTP server on 127.0.0.1 answering from a table of (method, path prefix) → (status, body);
    anything else is 404. Every request is recorded in `requests` as (method, path, decoded body)."""

    def __init__(self, answers: Mapping[tuple[str, str], tuple[int, Any]]) -> None:
        table = dict(answers)
        self.requests: list[tuple[str, str, Any]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                try:
                    recorded.append((self.command, path, json.loads(raw) if raw else None))
                except ValueError:
                    recorded.append((self.command, path, raw))
                status, body = next(
                    (v for (m, p), v in table.items() if m == self.command and path.startswith(p)),
                    (404, {"detail": "Not Found"}),
                )
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- a non-root agent ------------------------------------------------------------------------------


RUNUSER = shutil.which("runuser") or ""


def code_commit() -> str:
    """The code a result measured: HEAD's short hash, `-dirty` when dagent, tests or bench have uncommitted
    changes (a changed document is not the code)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "dagent", "tests", "bench"],
                           cwd=REPO, capture_output=True, text=True)  # fmt: skip
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def dagent_path() -> str:
    """What every dagent a test starts puts first on PYTHONPATH: the checkout, or a mutant's copy of the
    package (tests/support/mutants.py) named by DAGENT_TEST_CODE, so that a suite can be run against broken code."""
    code = os.environ.get("DAGENT_TEST_CODE")
    return os.pathsep.join([code, str(REPO)]) if code else str(REPO)


def _path() -> str:
    # The venv's interpreter may live under /root (pyenv), which nobody cannot enter; a system
    # Python of the same version can import the venv's packages instead.
    return os.pathsep.join([dagent_path(), *site.getsitepackages()])


@functools.cache
def nobody_python() -> str | None:
    """An interpreter `nobody` can run that imports dagent and its dependencies; None if none."""
    if os.geteuid() != 0 or not RUNUSER:
        return None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (
        sys.executable,
        os.path.realpath(sys.executable),
        f"/usr/bin/{version}",
        f"/usr/local/bin/{version}",
    ):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [RUNUSER, "-u", "nobody", "--", candidate, "-c", "import pydantic, docker, dagent.cli"],
            capture_output=True, env={"PYTHONPATH": _path()}, timeout=60,
        )  # fmt: skip
        if probe.returncode == 0:
            return candidate
    return None


def run_as_nobody(
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 120,
    group: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS...` as nobody (in `group`, e.g. docker) with dagent importable.

    The caller skips when nobody_python() is None.
    """
    interpreter = nobody_python()
    assert interpreter is not None
    as_group = ["-g", group] if group else []
    return subprocess.run(
        [RUNUSER, "-u", "nobody", *as_group, "--", interpreter, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _path(), **(env or {})},
    )


# --- dagent as a user runs it ---------------------------------------------------------------------


@dataclass
class Dagent:
    """Runs `dagent` in a subprocess with its own agent name and config, as a user would."""

    name: str
    workdir: Path
    client: docker.DockerClient

    def config(self, text: str = "", **docker_keys: Any) -> Path:
        """Write agent.toml for this agent; keyword args go under [docker]."""
        lines = [f'name = "{self.name}"', text]
        if docker_keys:
            lines.append("[docker]")
            lines += [f"{k} = {_toml(v)}" for k, v in docker_keys.items()]
        path = self.workdir / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_file(self, run_id: str, **fields: Any) -> Path:
        """Write a run file."""
        path = self.workdir / f"{run_id}.toml"
        path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in {"id": run_id, **fields}.items()))
        return path

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_")) and k != "DOCKER_HOST"}
        return subprocess.run(
            [sys.executable, "-m", "dagent", *args],
            cwd=self.workdir,
            env={**base, "PYTHONPATH": dagent_path(), "DAGENT_RETRY__BACKOFF_INITIAL": "0.1", **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def containers(self, run_id: str | None = None) -> list[Any]:
        """This agent's containers (all states)."""
        labels = [f"dagent.agent={self.name}"] + ([f"dagent.run-id={run_id}"] if run_id else [])
        for _ in range(10):
            try:
                return list(self.client.containers.list(all=True, filters={"label": labels}))
            except docker.errors.NotFound:
                continue  # removed between docker-py's list and its inspect of each: list again
        return list(self.client.containers.list(all=True, filters={"label": labels}))


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


class AgentProcess:
    """`dagent start` in its own process, logging to a file."""

    def __init__(
        self, dagent: Dagent, config: Path, *args: str, name: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = dagent.workdir / f"agent-{name or dagent.name}-{time.monotonic_ns()}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_")) and k != "DOCKER_HOST"}
        env = {**base, "PYTHONPATH": dagent_path(), "DAGENT_RETRY__BACKOFF_INITIAL": "0.1", **(env or {})}
        if os.environ.get("TEST_AGENT_LOG_LEVEL"):  # e.g. DEBUG, to chase a race in the agents' logs
            env["DAGENT_LOG_LEVEL"] = os.environ["TEST_AGENT_LOG_LEVEL"]
        if name:
            env["DAGENT_NAME"] = name
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dagent", "start", "-c", str(config), *args],
                cwd=dagent.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def signal(self, signum: int = signal.SIGTERM, timeout: float = 45) -> int:
        """Send a signal and wait for the process to end; its exit code.

        An agent stops after the API request in flight, which a stalled server answers only at
        api.timeout (30 s): the wait is longer than that.
        """
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def results(inbox: Path) -> dict[str, dict[str, object]]:
    """done/<id>.json files by run id."""
    return {p.stem: json.loads(p.read_text()) for p in (inbox / "done").glob("*.json")}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition until true; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def drop(inbox: Path, run_id: str, **fields: object) -> None:
    """Drop a run file the way writers must: write a temp name, rename into new/."""
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    tmp = inbox / "new" / f".{run_id}.tmp"
    tmp.write_text(text)
    tmp.rename(inbox / "new" / f"{run_id}.toml")


def agent_config(
    dagent: Dagent, inbox: Path, *, concurrency: int = 4, labels: list[str] | None = None, **docker: object
) -> Path:
    """An agent.toml for the inbox source with a fast poll."""
    head = (
        f"concurrency = {concurrency}\npoll_interval = 0.2\nlabels = {json.dumps(labels or [])}\n"
        f'[inbox]\npath = "{inbox}"\n'
    )
    return dagent.config(head, **docker)


def count_dir(tmp_path: Path) -> Path:
    """A host directory runs may mount, beside (never around) the agent's own config and inbox."""
    path = tmp_path / "count"
    path.mkdir(exist_ok=True)
    return path


def counting_run(image: str, counter: Path, seconds: float, code: int = 0) -> dict[str, object]:
    """A run that appends its id to a host file when it starts, so a second start would show."""
    return {
        "image": image,
        "command": ["sh", "-c", f'echo "$DAGENT_RUN_ID" >> /count/starts; sleep {seconds}; exit {code}'],
        "volumes": [f"{counter.parent}:/count"],
    }
