"""Conformance: the same deployments run under Prefect's own Docker worker (prefect-docker), started
with `prefect worker start --type docker`, and under dagent, started with `dagent worker start` and
the same flags; their containers compared field by field with `docker inspect`.

One Prefect server, two pools made by Prefect's CLI from one customised docker base job template
(changed variable defaults, a value pinned in `job_configuration`), a local registry so a pull can be
seen, and each case of `cases.py` run on both. Prints a table of every difference; a difference is
"deliberate" only when DELIBERATE says why (and docs/prefect.md says the same). A whole run (no
--short or --only) writes what it printed to bench/results/conformance-full.json, and --mutants (all
of them) to conformance-mutants.json: `python -m bench.report` renders docs/conformance.md from them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.conformance.cases import CASES, EXIT_0, FAMILIES, Case
from tests.conformance.mutants import MUTANTS
from tests.support import REPO, infra, prefect_infra
from tests.support.helpers import code_commit
from tests.support.mutants import Mutant, StaleMutant
from tests.support.prefect_api import PrefectAPI

ABSENT = "<absent>"  # a key one side has and the other has not

# The worker's watcher emits this only when it happens to poll the container between its end and the
# run's end: present in some runs, absent in others. dagent always emits it (tests/integration checks it).
EXITED = "prefect.docker.container.exited"


@dataclass(frozen=True)
class Exemption:
    """One compared key that may differ, how it may differ (`holds(worker, dagent)`), and why.

    In a case it applies to where `expected(worker value)`, the two values must differ as it says: the
    same value on both sides is reported too (dagent lost the difference, or the worker changed). And
    it must fire in at least one case of its `families` (and of its `cases`, when given) that ran: an
    exemption that no longer fires is reported, so none outlives its reason."""

    why: str
    holds: Callable[[Any, Any], bool]
    families: frozenset[str] = frozenset({"job variables", "keywords", "flow runs"})
    cases: frozenset[str] = frozenset()
    expected: Callable[[Any], bool] = lambda worker: True

    def applies(self, case: Case) -> bool:
        return case.family in self.families and (not self.cases or case.name in self.cases)


def _worker_only(why: str, **kw: Any) -> Exemption:
    return Exemption(why, lambda w, d: w != ABSENT and d == ABSENT, **kw)


def _dagent_only(why: str, **kw: Any) -> Exemption:
    return Exemption(why, lambda w, d: w == ABSENT and d != ABSENT, **kw)


# The pools' templates: Prefect's, customised; and the same with auto_remove pinned off in its job configuration.
TEMPLATES = ("customised", "pinned")

# A variable of both workers' own environment, which a job variable names as `{{ $NAME }}`.
AGENT_VAR, AGENT_VALUE, FROM_AGENT = "CONFORMANCE_AGENT_VAR", "agent-only-value", "FROM_AGENT_ENV"
_WORKER_SETTINGS = (
    "the worker copies its own PREFECT_* settings into each container; dagent passes the API URL and key and "
    "the run's ids only, and others when api.pass_settings names them"
)
_OWN_LABEL = "dagent's own label: which agent owns the container, and what to do with it after a restart"
_PREFECT_VERSION = "the version of the software that emitted it: Prefect's, or dagent-<version>"
_BASE_URL = (
    "infrastructure_pid: the worker writes <daemon base URL>:<container id> (http+docker://localhost on every "
    "host), dagent <host name>:<container id>; both read the container id after the last ':'"
)
_ENGINE = frozenset({"flow runs"})

# Every key that may differ between the two sides, alone, with why (docs/prefect.md says the same).
EXEMPTIONS: dict[str, Exemption] = {
    "Name": Exemption(
        "dagent names a container dagent-<run id> (it finds and adopts it by that after a restart); Prefect's "
        "worker names it after the flow run, or the `name` job variable",
        lambda w, d: d == "dagent-<run-id>",
    ),
    "Config.Env.PREFECT_HOME": _worker_only(_WORKER_SETTINGS),
    "Config.Env.PREFECT_SERVER_EPHEMERAL_ENABLED": _worker_only(_WORKER_SETTINGS),
    "Config.Env.PREFECT_WORKER_QUERY_SECONDS": _worker_only(_WORKER_SETTINGS),
    "Config.Env.DAGENT_RUN_ID": _dagent_only("dagent tells the container its run's id under its own name too"),
    f"Config.Env.{FROM_AGENT}": Exemption(
        "Prefect's worker fills {{ $NAME }} from its own environment; dagent leaves it empty (a job variable "
        "must not read the agent's secrets)",
        lambda w, d: w == AGENT_VALUE and d == "",
        cases=frozenset({"env placeholder of the worker's environment"}),
    ),
    "Config.Labels.dagent.agent": _dagent_only(_OWN_LABEL),
    "Config.Labels.dagent.keep": _dagent_only(_OWN_LABEL),
    "Config.Labels.dagent.run-id": _dagent_only(_OWN_LABEL),
    "Config.Labels.dagent.source": _dagent_only(_OWN_LABEL),
    "Config.Labels.io.prefect.version": Exemption(_PREFECT_VERSION, lambda w, d: str(d).startswith("dagent-")),
    "run.states": Exemption(
        "a container that exits 0 without the flow engine's final state: the worker leaves the run Submitting, "
        "dagent sets it CRASHED with why",
        lambda w, d: isinstance(w, list) and isinstance(d, list) and w[-1:] == ["Submitting"] and d == [*w, "Crashed"],
        families=frozenset({"job variables", "keywords"}),
        expected=lambda w: isinstance(w, list) and w[-1:] == ["Submitting"],
    ),
    "HostConfig.AutoRemove": Exemption(
        "auto_remove: the worker asks Docker to remove the container at its end; dagent removes it itself once it "
        "has read the exit code (run.container_left is the same on both)",
        lambda w, d: w is True and d is False,
        cases=frozenset({"auto_remove"}),
    ),
    "run.infrastructure_pid": Exemption(
        _BASE_URL,
        lambda w, d: str(w) == "http+docker://localhost:<container id>" and d == "<host>:<container id>",
        expected=lambda w: w not in (None, ABSENT),  # neither writes one for a container that never started
    ),
    "events.prefect.worker.executed-flow-run.related.flow-run.prefect.infrastructure.identifier": Exemption(
        _BASE_URL,
        lambda w, d: str(w) == "http+docker://localhost:<container id>" and d == "<host>:<container id>",
        families=_ENGINE,
    ),
    "run.outcome": Exemption(
        "a keyword dagent does not take: the worker passes it to Docker (which may refuse it too), dagent ends "
        "the run CRASHED naming it",
        lambda w, d: (w == "a container" or str(w).startswith("CRASHED")) and d == "CRASHED naming the keyword",
        families=frozenset({"refused"}),
    ),
    **{
        f"events.{name}.{where}.prefect.version": Exemption(
            _PREFECT_VERSION,
            lambda w, d: str(d).startswith("dagent-"),
            families=_ENGINE,
            expected=lambda w: w != ABSENT,
        )
        for name, where in [
            ("prefect.worker.submitted-flow-run", "resource"),
            ("prefect.worker.executed-flow-run", "resource"),
            ("prefect.docker.container.created", "related.worker"),
            ("prefect.docker.container.running", "related.worker"),
        ]
    },
}

# Values made comparable before the comparison, each with why: they differ on every run, by nature.
NORMALISED = {
    "the run's own ids and names": "the run, its deployment, flow, pool and worker differ between the two sides; "
    "each is replaced by its role (<run-id>, <deployment-name>, <worker>...)",
    "Config.Hostname": "Docker's default host name is the container's own id, which differs; it reads <container id>",
    "Config.Labels.io.prefect.deployment-updated": "each side has a deployment of its own, made moments apart",
    "a container id": "in infrastructure_pid and event resources: each side's container is its own",
    "Config.Env, Config.Labels, flow-run labels, events": "compared key by key, so each key is exempted alone",
    "an event's follows": "an event's id is random: follows names the event it follows",
    EXITED: "not compared: the worker's watcher emits it only when it polls the container between its end and "
    "the run's end (present in some runs, absent in others); dagent always emits it",
}


class NoContainer(Exception):
    """A side ran the case without a container (it refused the run, or never took it)."""


@dataclass
class Side:
    """One system under comparison: a pool, and how to start its worker."""

    name: str
    pool: str
    worker_name: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class Result:
    case: Case
    values: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key → (worker, dagent)
    error: str | None = None

    def differences(self) -> Iterator[tuple[str, Any, Any, str | None]]:
        """Each differing key, both values, and the exemption's key when one covers it (else None)."""
        for key, (worker, ours) in sorted(self.values.items()):
            if worker != ours:
                rule = EXEMPTIONS.get(key)
                covered = rule is not None and rule.applies(self.case) and rule.holds(worker, ours)
                yield key, worker, ours, (key if covered else None)

    def lost(self) -> list[str]:
        """Keys whose exemption expected a difference in this case that is not there."""
        return [
            key for key, rule in EXEMPTIONS.items()
            if rule.applies(self.case) and key in self.values and self.values[key][0] == self.values[key][1]
            and rule.expected(self.values[key][0])
        ]  # fmt: skip

    @property
    def red(self) -> bool:
        """An error, a difference no exemption covers, or an expected difference gone."""
        return bool(self.error or self.lost() or any(exemption is None for *_, exemption in self.differences()))


def _template(image: str, pinned: bool) -> dict[str, Any]:
    """Prefect's docker base job template, customised as a team would: defaults changed (and with `pinned`,
    one value pinned in its job configuration)."""
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
    if pinned:
        template["job_configuration"]["auto_remove"] = False  # no deployment can turn it on
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


def _container_fields(container: Any, names: dict[str, str]) -> dict[str, Any]:
    """Every key of `docker inspect`'s Config and HostConfig (Env and Labels key by key), its name, mounts
    and networks."""
    attrs = container.attrs
    values: dict[str, Any] = {"Name": container.name}
    for section in ("Config", "HostConfig"):
        for key, value in (attrs.get(section) or {}).items():
            if section == "Config" and key == "Env":
                for item in value or []:
                    name, _, text = item.partition("=")
                    values[f"Config.Env.{name}"] = text
            elif section == "Config" and key == "Labels":
                for name, text in (value or {}).items():
                    values[f"Config.Labels.{name}"] = text
            else:
                values[f"{section}.{key}"] = value
    hostname = values.get("Config.Hostname")
    if hostname and container.id.startswith(hostname):
        values["Config.Hostname"] = "<container id>"
    if "Config.Labels.io.prefect.deployment-updated" in values:
        values["Config.Labels.io.prefect.deployment-updated"] = "<when the deployment was updated>"
    values["Mounts"] = sorted(
        [m.get("Type"), m.get("Name") or m.get("Source"), m.get("Destination"), m.get("RW")] for m in attrs["Mounts"]
    )
    values["NetworkSettings.Networks"] = sorted(attrs["NetworkSettings"]["Networks"])
    return {k: _normalise(v, names) for k, v in values.items()}


def _event_fields(events: list[dict[str, Any]], names: dict[str, str]) -> dict[str, Any]:
    """A run's worker and container events, key by key: resource, related resources by role, and which
    event each follows (by name: ids are random)."""
    mine = [e for e in events if e["event"].startswith(("prefect.worker.", "prefect.docker.")) and e["event"] != EXITED]
    by_id = {e["id"]: e["event"] for e in mine}
    values: dict[str, Any] = {"events": sorted(e["event"] for e in mine)}
    for e in mine:
        prefix = f"events.{e['event']}"
        for key, value in e["resource"].items():
            values[f"{prefix}.resource.{key}"] = value
        values[f"{prefix}.related.roles"] = [r.get("prefect.resource.role") for r in e.get("related") or []]
        for related in e.get("related") or []:
            for key, value in related.items():
                values[f"{prefix}.related.{related.get('prefect.resource.role')}.{key}"] = value
        values[f"{prefix}.follows"] = by_id.get(e.get("follows") or "", e.get("follows"))
        values[f"{prefix}.payload"] = e.get("payload")
    return {k: _normalise(v, names) for k, v in values.items()}


class Conformance:
    def __init__(self, stack: ExitStack, root: Path, cases: list[Case]) -> None:
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
        self.image_private, self.private_registry, self.private_password = "-", "-", "-"
        if any("registry_credentials" in c.deployment for c in cases):
            self.image_private, self.private_registry, self.private_password = self._private_registry(busybox)
        self.flow_image = prefect_infra.flow_image() if any(c.entrypoint for c in cases) else "-"
        self.network = f"conformance-{uuid.uuid4().hex[:6]}"
        self.client.networks.create(self.network, driver="bridge")
        stack.callback(lambda: self.client.networks.get(self.network).remove())
        self.data = root / "data"
        self.data.mkdir()
        root.chmod(0o755)
        suffix = uuid.uuid4().hex[:6]
        self.pairs: dict[str, tuple[Side, Side]] = {}
        for template in TEMPLATES:
            path = root / f"template-{template}.json"
            path.write_text(json.dumps(_template(self.image, pinned=template == "pinned")))
            pair = (Side("Prefect's worker", f"conformance-prefect-{template}-{suffix}", f"conformance-worker-{template}"),
                    Side("dagent", f"conformance-dagent-{template}-{suffix}", f"conformance-dagent-{template}"))  # fmt: skip
            for side in pair:
                self._prefect("work-pool", "create", side.pool, "--type", "docker", "--base-job-template", str(path))
            self.pairs[template] = pair
        self.dagent_path = REPO  # where `import dagent` finds the code under test (a mutant's copy, say)
        self.flow_id = self.api.call("POST", "/flows/", {"name": "conformance"})["id"]
        with contextlib.suppress(urllib.error.HTTPError):  # 409: made by an earlier run on this server
            self.api.call("POST", "/variables/", {"name": "conformance_var", "value": "from-a-variable"})
        self.pool_ids = {
            side.pool: self.api.call("GET", f"/work_pools/{side.pool}")["id"]
            for pair in self.pairs.values()
            for side in pair
        }

    def _private_registry(self, busybox: str) -> tuple[str, str, str]:
        """A second registry behind a login: its busybox (not on the host, so both sides must pull it with the
        login), its address and its password."""
        (self.root / "private").mkdir()
        password = uuid.uuid4().hex
        registry = infra.Registry(self.root / "private", credentials=("conformance", password))
        self.stack.callback(registry.stop)
        image = registry.push(busybox, "conformance/private:1")
        self.client.images.remove(image, force=True)
        return image, registry.address, password

    def _env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DAGENT_"))}
        return {**base, "PREFECT_API_URL": self.server.api_url, "PREFECT_HOME": str(self.root / "prefect-home"),
                AGENT_VAR: AGENT_VALUE}  # fmt: skip

    def _prefect(self, *args: str) -> None:
        subprocess.run([str(self.venv / "bin" / "prefect"), *args], check=True, capture_output=True, env=self._env())

    def _start(self, template: str) -> tuple[Side, Side]:
        """The template's pair of pools, each with its worker running (started on first use, logging to files)."""
        worker, dagent = self.pairs[template]
        if worker.process is None:
            worker.log = self.root / f"{worker.worker_name}.log"
            worker.process = subprocess.Popen(
                [str(self.venv / "bin" / "prefect"), "worker", "start", "--pool", worker.pool, "--type", "docker",
                 "--name", worker.worker_name],
                env={**self._env(), "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=self.root,
                stdout=worker.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            self.stack.callback(self._stop, worker)
        if dagent.process is None:
            self._start_dagent(dagent)
            self.stack.callback(self._stop, dagent)
        return worker, dagent

    def _start_dagent(self, dagent: Side) -> None:
        config = self.root / "agent.toml"
        # Prefect's own command line (what a team switching would run), plus the policy in agent.toml.
        config.write_text(
            f'[docker]\nkeep_containers = "always"\nallowed_host_paths = ["{self.data}"]\nallow_named_volumes = true\n'
            'allowed_volumes = ["conf-vol"]\nallow_privileged = true\nallow_host_network = true\n'
            'allowed_capabilities = ["NET_ADMIN"]\nallowed_devices = ["/dev/null"]\n'
        )
        dagent.log = self.root / f"{dagent.worker_name}.log"
        dagent.process = subprocess.Popen(
            [sys.executable, "-m", "dagent", "worker", "start", "--pool", dagent.pool, "--type", "docker",
             "--name", dagent.worker_name, "-c", str(config)],
            env={**self._env(), "PYTHONPATH": str(self.dagent_path), "PREFECT_WORKER_QUERY_SECONDS": "1"},
            cwd=self.root, stdout=dagent.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def use_dagent(self, path: Path) -> None:
        """Run dagent from `path` (its `dagent` package) from now on: every running dagent is restarted."""
        self.dagent_path = path
        for _, dagent in self.pairs.values():
            if dagent.process is not None:
                self._stop(dagent)
                self._start_dagent(dagent)

    @staticmethod
    def _stop(side: Side) -> None:
        if side.process is not None and side.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(side.process.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                side.process.wait(timeout=20)

    def _fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.format(image=self.image, image_latest=self.image_latest, image_private=self.image_private, private_registry=self.private_registry,
                                private_password=self.private_password,
                                data=self.data, network=self.network, flow_image=self.flow_image)  # fmt: skip
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        return value

    def _deployment(self, side: Side, case: Case) -> dict[str, Any]:
        body = {"name": f"{case.name}-{uuid.uuid4().hex[:6]}".replace(" ", "-"), "flow_id": self.flow_id,
                "work_pool_name": side.pool, "job_variables": self._fill(case.deployment)}  # fmt: skip
        if case.entrypoint:
            body |= {"entrypoint": case.entrypoint, "tags": ["conformance"],
                     "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": "/flows"}}]}  # fmt: skip
        return dict(self.api.call("POST", "/deployments/", body))

    def _run_on(self, side: Side, case: Case) -> dict[str, Any]:
        """Run the case on one side; every value compared, normalised (NoContainer when none was made)."""
        deployment = self._deployment(side, case)
        pulls_before = self._pulls()
        run_id = self.api.run(deployment["id"], self._fill(case.flow_run) or None)
        names = {
            run_id: "<run-id>", deployment["id"]: "<deployment-id>", deployment["name"]: "<deployment-name>",
            side.pool: "<pool>", self.flow_id: "<flow-id>", side.worker_name: "<worker>", str(self.root): "<work dir>",
            str(self.pool_ids.get(side.pool, "-")): "<pool-id>",
        }  # fmt: skip
        try:
            container = self._wait_container(run_id, side)
        except NoContainer as e:
            if case.refused is None:
                raise
            return {"run.outcome": str(e.args[1]) if len(e.args) > 1 else str(e)}
        try:
            deadline = time.monotonic() + (120 if case.entrypoint else 30)
            while container.status not in ("exited", "dead") and time.monotonic() < deadline:
                time.sleep(0.3)
                try:
                    container.reload()
                except docker.errors.NotFound:  # removed at its end (auto_remove): what was read last stands
                    break
            flow_run = self._settled(run_id, case, side)
            names = {f"{socket.gethostname()}:{container.id}": "<host>:<container id>", container.id: "<container id>",
                     str(flow_run.get("name")): "<run-name>", **names}  # fmt: skip
            values = _container_fields(container, names)
            # Whether the side removed the container at the run's end (auto_remove), read before we remove it.
            values["run.container_left"] = bool(self.client.containers.list(all=True, filters={"id": container.id}))
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
        values["pulled"] = self._pulls() > pulls_before
        if case.refused is not None:
            return {"run.outcome": "a container"}
        history = self.api.call("GET", f"/flow_run_states/?flow_run_id={run_id}")
        values["run.states"] = [h["name"] for h in sorted(history, key=lambda h: h["timestamp"])]
        values["run.infrastructure_pid"] = _normalise(flow_run.get("infrastructure_pid"), names)
        for key, value in (flow_run.get("labels") or {}).items():
            values[f"run.labels.{key}"] = _normalise(value, names)
        if case.entrypoint:
            values |= _event_fields(self._events(run_id), names)
        return values

    def _settled(self, run_id: str, case: Case, side: Side) -> dict[str, Any]:
        """The flow run once its state has followed its container's end."""
        final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        if case.entrypoint:
            return self.api.wait_state(run_id, final, 60)
        if side.name == "dagent":
            # dagent ends a run whose container exited: after ENGINE_EVENT_WAIT (2 s) for the engine's word,
            # more on a loaded machine. A fixed pause here once read some runs before dagent had ended them.
            with contextlib.suppress(AssertionError):
                return self.api.wait_state(run_id, final, 20)
            return self.api.flow_run(run_id)
        time.sleep(2.0)  # a container that exited 0 leaves the run as it was under the worker: nothing to wait for
        return self.api.flow_run(run_id)

    def _events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events once the worker's last one (executed-flow-run) is persisted."""
        query = {"filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}
        deadline = time.monotonic() + 30
        while True:
            found = self.api.call("POST", "/events/filter", query)["events"]
            if any(e["event"] == "prefect.worker.executed-flow-run" for e in found) or time.monotonic() > deadline:
                time.sleep(1.0)  # the rest of its batch
                return list(self.api.call("POST", "/events/filter", query)["events"])
            time.sleep(0.5)

    def _pulls(self) -> int:
        logs = [
            self.registry.log_path,
            *([self.root / "private" / "registry.log"] if self.private_registry != "-" else []),
        ]
        return sum("/manifests/" in line and '"GET ' in line for log in logs for line in log.read_text().splitlines())

    def _wait_container(self, run_id: str, side: Side, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.client.containers.list(all=True, filters={"label": f"io.prefect.flow-run-id={run_id}"})
            if found:
                return found[0]
            state = self.api.flow_run(run_id).get("state") or {}
            if state.get("type") in ("CRASHED", "FAILED", "CANCELLED", "COMPLETED"):
                message = str(state.get("message") or "").splitlines()[0][:160]
                raise NoContainer(f"{side.name} made no container: {state.get('type')} ({message})",
                                  _refused_outcome(state))  # fmt: skip
            time.sleep(0.3)
        raise NoContainer(f"{side.name} made no container for flow run {run_id} in {timeout:.0f} s")

    def run(self, case: Case) -> Result:
        result = Result(case)
        try:
            worker, ours = (self._run_on(side, case) for side in self._start(case.template))
        except urllib.error.HTTPError as e:  # the API refused the case's deployment or run: say what it said
            result.error = f"{e}: {e.read()[:300].decode(errors='replace')}"
            return result
        except (NoContainer, docker.errors.APIError, OSError, AssertionError) as e:
            result.error = str(e.args[0] if e.args else e).splitlines()[0]
            return result
        if case.refused is not None and ours.get("run.outcome", "").startswith("CRASHED"):
            if case.refused not in ours["run.outcome"]:
                ours["run.outcome"] = f"CRASHED, not naming {case.refused}: {ours['run.outcome']}"
            else:
                ours["run.outcome"] = "CRASHED naming the keyword"
        # Every key either side has is compared: a key read but left out can never differ.
        result.values = {key: (worker.get(key, ABSENT), ours.get(key, ABSENT)) for key in worker.keys() | ours.keys()}
        return result


def _refused_outcome(state: dict[str, Any]) -> str:
    return f"{state.get('type')}: {str(state.get('message') or '')[:300]}"


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


@dataclass
class Report:
    """What a run found: the Markdown, and how many differences, errors and stale exemptions it has."""

    text: str
    undocumented: int
    keys: int


def report(results: list[Result]) -> Report:
    """Undocumented differences and errors, each exemption with the cases it fired in, and stale exemptions."""
    rows, undocumented = [], 0
    fired: dict[str, list[tuple[str, Any, Any]]] = {key: [] for key in EXEMPTIONS}
    keys: set[str] = set()
    for result in results:
        keys |= result.values.keys()
        if result.error:
            rows.append(f"| {result.case.name} | (run) | | | **error: {result.error}** |")
            undocumented += 1
            continue
        for key in result.lost():
            undocumented += 1
            rows.append(f"| {result.case.name} | {key} | {_cell(result.values[key][0])} | (the same) | **no: "
                        "its exemption expected a difference here** |")  # fmt: skip
        for key, worker, ours, exemption in result.differences():
            if exemption is not None:
                fired[exemption].append((result.case.name, worker, ours))
                continue
            undocumented += 1
            shown_worker, shown_ours = _shown(worker, ours)
            rows.append(f"| {result.case.name} | {key} | {_cell(shown_worker)} | {_cell(shown_ours)} | **no** |")
    exemption_rows = []
    for key, rule in EXEMPTIONS.items():
        ran = [r for r in results if rule.applies(r.case) and not r.error]
        if not ran:
            continue
        hits = fired[key]
        if not hits:  # the reason is gone, or the comparison no longer sees it: either way, say so
            undocumented += 1
            exemption_rows.append(f"| {key} | **never fired in {len(ran)} case(s)** | | | {rule.why} |")
            continue
        _, worker, ours = hits[0]
        exemption_rows.append(f"| {key} | {len(hits)} of {len(ran)} | {_cell(worker)} | {_cell(ours)} | {rule.why} |")
    families = ", ".join(f"{sum(r.case.family == f for r in results)} {f}" for f in FAMILIES)
    lines = [
        f"{len(results)} cases ({families}); {len(keys)} keys compared; {undocumented} undocumented difference(s).",
        "",
        "### Differences no exemption covers",
        "",
        "| case | key | Prefect's worker | dagent | deliberate |",
        "|---|---|---|---|---|",
        *(rows or ["| (none) | | | | |"]),
        "",
        "### Exemptions: each key that may differ, alone, and where it did",
        "",
        "| key | fired in | Prefect's worker (first case) | dagent | why |",
        "|---|---|---|---|---|",
        *exemption_rows,
        "",
        "### Normalised before the comparison",
        "",
        "| what | why |",
        "|---|---|",
        *(f"| {what} | {why} |" for what, why in NORMALISED.items()),
    ]
    return Report("\n".join(lines), undocumented, len(keys))


def _record(name: str, text: str, started: float) -> None:
    """Write a whole run's printed result to bench/results/<name>.json; `python -m bench.report` puts it in
    docs/conformance.md with when, on which code and machine it was printed."""
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": code_commit(),
        "backend": prefect_infra.default_backend(), "cpus": os.cpu_count(), "prefect": prefect_infra.PREFECT,
        "seconds": round(time.monotonic() - started),
    }  # fmt: skip
    out = REPO / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps({"meta": meta, "text": text}, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}", file=sys.stderr)


def run_mutants(suite: Conformance, root: Path, mutants: list[Mutant]) -> tuple[str, int]:
    """Each mutant against its catchers: a line per mutant, and how many were not caught."""
    lines = ["| mutant | broken in | caught by |", "|---|---|---|"]
    missed = 0
    by_name = {c.name: c for c in CASES}
    # Each catcher must pass with dagent as it is, or a red under a mutant would prove nothing.
    for name in dict.fromkeys(n for m in mutants for n in m.catchers):
        print(f"conformance: {name} (unbroken) ...", file=sys.stderr, flush=True)
        if suite.run(by_name[name]).red:
            lines.append(f"| (none) | | **{name} fails with dagent unbroken: no mutant can be judged by it** |")
            missed += 1
    for mutant in mutants:
        print(f"conformance: mutant {mutant.name} ...", file=sys.stderr, flush=True)
        try:
            suite.use_dagent(mutant.apply(root / "mutants"))
        except StaleMutant as e:
            lines.append(f"| {mutant.name} | `dagent/{mutant.path}` | **stale: {e}** |")
            missed += 1
            continue
        caught = None
        for name in mutant.catchers:
            if suite.run(by_name[name]).red:
                caught = name
                break
        missed += caught is None
        lines.append(f"| {mutant.name} | `dagent/{mutant.path}` | {caught or '**not caught**'} |")
        print(f"{mutant.name}: {f'caught by {caught}' if caught else 'not caught'}", flush=True)
    suite.use_dagent(REPO)
    return "\n".join(lines), missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the cases marked short (CI)")
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--mutants", nargs="?", const="all", metavar="NAMES",
                        help="instead of the cases: run each mutant (or those named, comma-separated) against "
                             "the cases that should catch it; exit 0 only when every one is caught")  # fmt: skip
    args = parser.parse_args()
    cases = [c for c in CASES if not args.short or c.short]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = sorted(set(wanted) - {c.name for c in CASES})
        if unknown:  # a mistyped name must not pass as a run of nothing
            parser.error(f"--only: no such case: {', '.join(unknown)}")
        cases = [c for c in CASES if c.name in wanted]
    mutants: list[Mutant] = []
    if args.mutants:
        wanted = [] if args.mutants == "all" else [name.strip() for name in args.mutants.split(",")]
        unknown = sorted(set(wanted) - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"--mutants: no such mutant: {', '.join(unknown)}")
        mutants = [m for m in MUTANTS if not wanted or m.name in wanted]
        cases = [c for c in CASES if any(c.name in m.catchers for m in mutants)]
    os.environ.pop("DOCKER_HOST", None)
    started = time.monotonic()
    with infra.docker_engine(), ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="dagent-conformance-"))
        suite = Conformance(stack, root, cases)
        if mutants:
            text, missed = run_mutants(suite, root, mutants)
            print(text)
            if args.mutants == "all":
                _record("conformance-mutants", text, started)
            print(f"\n{len(mutants)} mutants, {missed} not caught, {time.monotonic() - started:.0f} s", file=sys.stderr)
            return 0 if missed == 0 else 1
        results = []
        for case in cases:
            print(f"conformance: {case.name} ...", file=sys.stderr, flush=True)
            results.append(suite.run(case))
    found = report(results)
    print(found.text)
    if not (args.short or args.only):
        _record("conformance-full", found.text, started)
    print(
        f"\n{len(cases)} cases, {found.keys} keys, {found.undocumented} undocumented difference(s), "
        f"{time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return 0 if found.undocumented == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
