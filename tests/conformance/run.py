"""Conformance: the same deployments run under Prefect's own Docker worker (prefect-docker), started
with `prefect worker start --type docker`, and under dagent, started with `dagent worker start` and
the same flags; their containers compared field by field with `docker inspect`.

One Prefect server, two pools made by Prefect's CLI from one customised docker base job template
(changed variable defaults, a value pinned in `job_configuration`), a local registry so a pull can be
seen, and each case of `cases.py` run on both. Prints a table of every difference; a difference is
"deliberate" only when DELIBERATE says why (and docs/prefect.md says the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.conformance.cases import CASES, EXIT_0, Case
from tests.conftest import REPO
from tests.integration import infra, prefect_infra
from tests.integration.prefect_api import PrefectAPI


# Differences by design, field → (predicate on (worker value, dagent value), reason). Every entry is
# also in docs/prefect.md, "Deliberate differences".
def _only(worker: Any, ours: Any, theirs: Collection[str] = (), mine: Collection[str] = ()) -> bool:
    """True when two tables differ only by keys the worker alone has (matching `theirs`) or dagent alone has."""
    if not (isinstance(worker, dict) and isinstance(ours, dict)):
        return False
    changed = {k for k in worker.keys() & ours.keys() if worker[k] != ours[k]}
    extra_worker = {k for k in worker.keys() - ours.keys()}
    extra_ours = {k for k in ours.keys() - worker.keys()}
    return (
        changed <= {*theirs, *mine}
        and all(any(k.startswith(p) for p in theirs) for k in extra_worker)
        and all(any(k.startswith(p) for p in mine) for k in extra_ours)
    )


# The worker passes its own PREFECT_* settings; dagent passes the API URL and key, the run's ids.
_WORKER_ENV = {"PREFECT_HOME", "PREFECT_SERVER_", "PREFECT_WORKER_", "PREFECT__WORKER_ID", "PREFECT_LOGGING_"}
# A variable of both workers' own environment, which a job variable names as `{{ $NAME }}`.
AGENT_VAR, AGENT_VALUE, FROM_AGENT = "CONFORMANCE_AGENT_VAR", "agent-only-value", "FROM_AGENT_ENV"


def _env_differs_as_designed(worker: Any, ours: Any) -> bool:
    if isinstance(worker, dict) and isinstance(ours, dict) and FROM_AGENT in worker:
        # Prefect's worker fills {{ $NAME }} from its own environment; dagent never does.
        if worker[FROM_AGENT] != AGENT_VALUE or ours.get(FROM_AGENT) != "":
            return False
        worker, ours = (
            {k: v for k, v in worker.items() if k != FROM_AGENT},
            {k: v for k, v in ours.items() if k != FROM_AGENT},
        )
    return _only(worker, ours, theirs=_WORKER_ENV, mine={"DAGENT_RUN_ID"})


DELIBERATE: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "env": (
        _env_differs_as_designed,
        "the worker copies its own PREFECT_* settings (and its backend id) into each container, and fills "
        "{{ $NAME }} from its own environment; dagent passes only the API URL and key, adds DAGENT_RUN_ID, "
        "and leaves {{ $NAME }} empty (a job variable must not read the agent's secrets)",
    ),
    "labels": (
        lambda w, d: _only(w, d, theirs={"io.prefect.version"}, mine={"dagent.", "io.prefect.version"}),
        "dagent adds its own dagent.* labels (ownership, restarts) and stamps io.prefect.version dagent-<version>",
    ),
    "name": (
        lambda w, d: d == "dagent-<run-id>",
        "dagent names a container dagent-<run id> (it finds and adopts it by that after a restart); "
        "Prefect's worker names it after the flow run, or the `name` job variable",
    ),
    "final_state": (
        lambda w, d: w == "PENDING" and d == "CRASHED",
        "a container that exits 0 without the flow engine's final state: the worker leaves the run PENDING, "
        "dagent sets it CRASHED with why",
    ),
}


class NoContainer(Exception):
    """A side ran the case without a container (it refused the run, or never took it)."""


@dataclass
class Side:
    """One system under comparison: a pool, and how to start its worker."""

    name: str
    pool: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Result:
    case: Case
    values: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field → (worker, dagent)
    error: str | None = None

    def differences(self) -> Iterator[tuple[str, Any, Any, str | None]]:
        for name, (worker, ours) in self.values.items():
            if worker != ours:
                rule = DELIBERATE.get(name)
                yield name, worker, ours, (rule[1] if rule and rule[0](worker, ours) else None)


def _template(image: str) -> dict[str, Any]:
    """Prefect's docker base job template, customised as a team would: defaults changed, one value pinned."""
    out = subprocess.run(
        [str(prefect_infra.prefect_venv() / "bin" / "prefect"), "work-pool", "get-default-base-job-template",
         "--type", "docker"],
        capture_output=True, text=True, check=True, env={**os.environ, "PREFECT_HOME": tempfile.mkdtemp()},
    )  # fmt: skip
    template: dict[str, Any] = json.loads(out.stdout)
    properties = template["variables"]["properties"]
    properties["image"]["default"] = image
    properties["command"]["default"] = EXIT_0
    properties["env"]["default"] = {"FROM_POOL": "1"}
    properties["labels"]["default"] = {"pool-label": "yes"}
    properties["stream_output"]["default"] = False
    template["job_configuration"]["auto_remove"] = False  # pinned: no deployment can turn it on
    return template


def _normalise(value: Any, names: dict[str, str]) -> Any:
    """Replace the run's own ids and names (which differ between the two sides) by their role."""
    if isinstance(value, str):
        for actual, role in names.items():
            if actual:
                value = value.replace(actual, role)
        return value
    if isinstance(value, dict):
        return {_normalise(k, names): _normalise(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, names) for v in value]
    return value


def _fields(container: Any, pulled: bool, state: str, names: dict[str, str], image_env: set[str]) -> dict[str, Any]:
    attrs = container.attrs
    config, host = attrs["Config"], attrs["HostConfig"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if item not in image_env)
    mounts = sorted(
        (m.get("Type"), m.get("Name") or m.get("Source"), m.get("Destination"), m.get("RW")) for m in attrs["Mounts"]
    )
    hostname = config.get("Hostname")
    labels = dict(config.get("Labels") or {})
    if "io.prefect.deployment-updated" in labels:  # each side has a deployment of its own, made moments apart
        labels["io.prefect.deployment-updated"] = "<when the deployment was updated>"
    values = {
        "name": container.name,
        "image": config.get("Image"),
        "command": config.get("Cmd"),
        "entrypoint": config.get("Entrypoint"),
        "env": env,
        "labels": labels,
        "network_mode": host.get("NetworkMode"),
        "networks": sorted(attrs["NetworkSettings"]["Networks"]),
        "mounts": [list(m) for m in mounts],
        "memory": host.get("Memory"),
        "memory_swap": host.get("MemorySwap"),
        "shm_size": host.get("ShmSize"),
        "privileged": host.get("Privileged"),
        "init": host.get("Init"),
        "extra_hosts": sorted(host.get("ExtraHosts") or []),
        "user": config.get("User"),
        "working_dir": config.get("WorkingDir"),
        "hostname": "<container id>" if hostname and container.id.startswith(hostname) else hostname,
        "ulimits": host.get("Ulimits"),
        "cap_add": host.get("CapAdd"),
        "healthcheck": config.get("Healthcheck"),
        "tmpfs": host.get("Tmpfs"),
        "auto_remove": host.get("AutoRemove"),
        "domainname": config.get("Domainname"),
        "tty": config.get("Tty"),
        "stop_signal": config.get("StopSignal"),
        "read_only": host.get("ReadonlyRootfs"),
        "cap_drop": host.get("CapDrop"),
        "dns": host.get("Dns"),
        "dns_search": host.get("DnsSearch"),
        "dns_opt": host.get("DnsOptions"),
        "mem_reservation": host.get("MemoryReservation"),
        "nano_cpus": host.get("NanoCpus"),
        "pids_limit": host.get("PidsLimit"),
        "log_config": host.get("LogConfig"),
        "restart_policy": host.get("RestartPolicy"),
        "security_opt": host.get("SecurityOpt"),
        "devices": host.get("Devices"),
        "pulled": pulled,
        "final_state": state,
    }
    return {k: _normalise(v, names) for k, v in values.items()}


class Conformance:
    def __init__(self, stack: ExitStack, root: Path) -> None:
        self.stack = stack
        self.root = root
        self.client = docker.from_env()
        venv = prefect_infra.prefect_venv()
        self.venv = venv
        self.server = prefect_infra.PrefectServer(venv, root / "server")
        stack.callback(self.server.stop)
        self.api = PrefectAPI(self.server.api_url)
        (root / "registry").mkdir()
        self.registry = infra.Registry(root / "registry")
        stack.callback(self.registry.stop)
        busybox = infra.busybox_image()
        self.image = self.registry.push(busybox, "conformance/busybox:1")
        self.image_latest = self.registry.push(busybox, "conformance/busybox:latest")
        self.network = f"conformance-{uuid.uuid4().hex[:6]}"
        self.client.networks.create(self.network, driver="bridge")
        stack.callback(lambda: self.client.networks.get(self.network).remove())
        self.data = root / "data"
        self.data.mkdir()
        root.chmod(0o755)
        self.image_env = set(self.client.images.get(self.image).attrs["Config"].get("Env") or [])
        template = root / "template.json"
        template.write_text(json.dumps(_template(self.image)))
        suffix = uuid.uuid4().hex[:6]
        self.worker = Side("Prefect's worker", f"conformance-prefect-{suffix}")
        self.dagent = Side("dagent", f"conformance-dagent-{suffix}")
        for side in (self.worker, self.dagent):
            self._prefect("work-pool", "create", side.pool, "--type", "docker", "--base-job-template", str(template))
        self.flow_id = self.api.call("POST", "/flows/", {"name": "conformance"})["id"]
        with contextlib.suppress(urllib.error.HTTPError):  # 409: made by an earlier run on this server
            self.api.call("POST", "/variables/", {"name": "conformance_var", "value": "from-a-variable"})
        self.pool_ids = {
            side.pool: self.api.call("GET", f"/work_pools/{side.pool}")["id"] for side in (self.worker, self.dagent)
        }

    def _env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DAGENT_"))}
        return {**base, "PREFECT_API_URL": self.server.api_url, "PREFECT_HOME": str(self.root / "prefect-home"),
                AGENT_VAR: AGENT_VALUE}  # fmt: skip

    def _prefect(self, *args: str) -> None:
        subprocess.run([str(self.venv / "bin" / "prefect"), *args], check=True, capture_output=True, env=self._env())

    def start(self) -> None:
        """Prefect's worker on its pool, dagent on its own, each logging to a file."""
        self.worker.log = self.root / "worker.log"
        self.worker.process = subprocess.Popen(
            [str(self.venv / "bin" / "prefect"), "worker", "start", "--pool", self.worker.pool, "--type", "docker",
             "--name", "conformance-worker"],
            env={**self._env(), "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=self.root,
            stdout=self.worker.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        config = self.root / "agent.toml"
        # Prefect's own command line (what a team switching would run), plus the policy in agent.toml.
        config.write_text(
            f'[docker]\nkeep_containers = "always"\nallowed_host_paths = ["{self.data}"]\nallow_named_volumes = true\nallowed_volumes = ["conf-vol"]\n'
            f'allow_privileged = true\nallow_host_network = true\nallowed_capabilities = ["NET_ADMIN"]\n'
        )
        self.dagent.log = self.root / "dagent.log"
        self.dagent.process = subprocess.Popen(
            [sys.executable, "-m", "dagent", "worker", "start", "--pool", self.dagent.pool, "--type", "docker",
             "--name", "conformance-dagent", "-c", str(config)],
            env={**self._env(), "PYTHONPATH": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=self.root,
            stdout=self.dagent.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        for side in (self.worker, self.dagent):
            self.stack.callback(self._stop, side)

    @staticmethod
    def _stop(side: Side) -> None:
        if side.process is not None and side.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(side.process.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                side.process.wait(timeout=20)

    def _fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.format(image=self.image, image_latest=self.image_latest, data=self.data, network=self.network)
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        return value

    def _run_on(self, side: Side, case: Case) -> tuple[Any, bool, str, dict[str, str]]:
        """Run the case on one side: its container (inspected), whether it pulled, the run's state, its names."""
        deployment = self.api.call(
            "POST", "/deployments/",
            {"name": f"{case.name}-{uuid.uuid4().hex[:6]}".replace(" ", "-"), "flow_id": self.flow_id,
             "work_pool_name": side.pool, "job_variables": self._fill(case.deployment)},
        )  # fmt: skip
        pulls_before = self._pulls()
        run_id = self.api.run(deployment["id"], self._fill(case.flow_run) or None)
        container = self._wait_container(run_id, side)
        deadline = time.monotonic() + 30
        while container.status not in ("exited", "dead") and time.monotonic() < deadline:
            time.sleep(0.3)
            container.reload()
        time.sleep(2.0)  # the run's state after the container ended
        flow_run = self.api.flow_run(run_id)
        names = {
            run_id: "<run-id>", str(flow_run.get("name")): "<run-name>", deployment["id"]: "<deployment-id>",
            deployment["name"]: "<deployment-name>", side.pool: "<pool>", self.flow_id: "<flow-id>",
            "conformance-worker": "<worker>", "conformance-dagent": "<worker>", str(self.root): "<work dir>",
            str(self.pool_ids.get(side.pool, "-")): "<pool-id>",
        }  # fmt: skip
        return container, self._pulls() > pulls_before, str((flow_run.get("state") or {}).get("type")), names

    def _pulls(self) -> int:
        return sum(
            "/manifests/" in line and '"GET ' in line for line in self.registry.log_path.read_text().splitlines()
        )

    def _wait_container(self, run_id: str, side: Side, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.client.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={run_id}"})
            if found:
                return found[0]
            state = self.api.flow_run(run_id).get("state") or {}
            if state.get("type") in ("CRASHED", "FAILED", "CANCELLED", "COMPLETED"):
                message = str(state.get("message") or "").splitlines()[0][:160]
                raise NoContainer(f"{side.name} made no container: {state.get('type')} ({message})")
            time.sleep(0.3)
        raise NoContainer(f"{side.name} made no container for flow run {run_id} in {timeout:.0f} s")

    def run(self, case: Case) -> Result:
        result = Result(case)
        found: dict[str, dict[str, Any]] = {}
        try:
            for side in (self.worker, self.dagent):
                container, pulled, state, names = self._run_on(side, case)
                try:
                    found[side.name] = _fields(container, pulled, state, names, self.image_env)
                finally:
                    with contextlib.suppress(docker.errors.APIError):
                        container.remove(force=True)
        except (NoContainer, docker.errors.APIError, OSError) as e:
            result.error = str(e).splitlines()[0]
            return result
        worker, ours = found[self.worker.name], found[self.dagent.name]
        # Every field _fields reads is compared: a field read but left out of a list can never differ.
        result.values = {name: (worker[name], ours[name]) for name in worker}
        return result


def _shown(worker: Any, ours: Any) -> tuple[Any, Any]:
    """For two tables, only what differs: the worker's side and dagent's side of each differing key."""
    if isinstance(worker, dict) and isinstance(ours, dict):
        keys = sorted(k for k in worker.keys() | ours.keys() if worker.get(k) != ours.get(k))
        return {k: worker.get(k) for k in keys if k in worker}, {k: ours.get(k) for k in keys if k in ours}
    return worker, ours


def _cell(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    text = text.replace("|", "\\|")
    return f"`{text}`" if len(text) <= 200 else f"`{text[:197]}...`"


def table(results: list[Result]) -> tuple[str, int]:
    """The differences as Markdown, and how many are not deliberate."""
    lines = ["| case | field | Prefect's worker | dagent | deliberate |", "|---|---|---|---|---|"]
    undocumented = 0
    for result in results:
        if result.error:
            lines.append(f"| {result.case.name} | (run) | | | **error: {result.error}** |")
            undocumented += 1
            continue
        for name, worker, ours, reason in result.differences():
            undocumented += reason is None
            shown_worker, shown_ours = _shown(worker, ours)
            lines.append(
                f"| {result.case.name} | {name} | {_cell(shown_worker)} | {_cell(shown_ours)} | {reason or '**no**'} |"
            )
    return "\n".join(lines), undocumented


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the cases marked short (CI)")
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table to FILE (docs/conformance.md)")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.short or c.short]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = sorted(set(wanted) - {c.name for c in CASES})
        if unknown:  # a mistyped name must not pass as a run of nothing
            parser.error(f"--only: no such case: {', '.join(unknown)}")
        cases = [c for c in CASES if c.name in wanted]
    os.environ.pop("DOCKER_HOST", None)
    started = time.monotonic()
    with infra.docker_engine(), ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="dagent-conformance-"))
        suite = Conformance(stack, root)
        suite.start()
        results = []
        for case in cases:
            print(f"conformance: {case.name} ...", file=sys.stderr, flush=True)
            results.append(suite.run(case))
    text, undocumented = table(results)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(
            "# Conformance with Prefect's Docker worker\n\n"
            f"What `python -m tests.conformance` printed ({len(cases)} cases, {undocumented} undocumented "
            "difference(s)): every field that differed between Prefect's worker and dagent, case by case. "
            "[docs/prefect.md](prefect.md#differences-from-prefects-worker) says why each is so.\n\n" + text + "\n"
        )
    print(
        f"\n{len(cases)} cases, {undocumented} undocumented difference(s), {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return 0 if undocumented == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
