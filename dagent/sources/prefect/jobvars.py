"""Job variables → RunRequest and what the container must carry (pure: no I/O, fuzzable)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from dagent import __version__
from dagent.errors import RunFileError
from dagent.images import normalize_registry, parse_image
from dagent.runs import RunRequest, parse_run
from dagent.sources.prefect.create_kwargs import DECISIONS
from dagent.spec import Origin, RegistryLogin
from dagent.units import parse_time

log = logging.getLogger("dagent.prefect")

DEFAULT_COMMAND = ("prefect", "flow-run", "execute")
# Job variables that map straight onto RunRequest fields.
_DIRECT = (
    "image",
    "env",
    "volumes",
    "cpus",
    "shm_size",
    "gpus",
    "devices",
    "ports",
    "timeout",
    "working_dir",
    "user",
    "privileged",
    "cap_add",
    "entrypoint",
)
# Prefect docker-pool variables dagent does not take: a container's name is dagent's (dagent-<run id>).
_IGNORED = frozenset({"name"})


def base_job_template() -> dict[str, Any]:
    """The template of a pool dagent creates: dagent's run fields plus `required_labels`, as job variables."""
    string_list = {"type": "array", "items": {"type": "string"}}
    properties: dict[str, Any] = {
        "image": {"type": "string", "title": "Image", "description": "Image reference for the flow run's container"},
        "command": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "default": None,
            "description": "Command; default `prefect flow-run execute`",
        },
        "env": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "default": {},
            "description": "Labels put on the container",
        },
        "required_labels": {**string_list, "default": [], "description": "Labels the agent must have to take the run"},
        "volumes": {**string_list, "default": [], "description": "SRC:DST[:ro|rw]"},
        "networks": {**string_list, "default": []},
        "network_mode": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "mem_limit": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "cpus": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        "shm_size": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "gpus": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}], "default": None},
        "devices": {**string_list, "default": []},
        "ports": {**string_list, "default": []},
        "cap_add": {**string_list, "default": []},
        "privileged": {"type": "boolean", "default": False},
        "timeout": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        "working_dir": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "user": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        # Prefect's docker variables, read as Prefect's Docker worker reads them.
        "name": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "image_pull_policy": {
            "anyOf": [{"enum": ["IfNotPresent", "Always", "IfPossible", "Never"], "type": "string"}, {"type": "null"}],
            "default": None,
        },
        "auto_remove": {"type": "boolean", "default": False},
        "stream_output": {
            "anyOf": [{"type": "boolean"}, {"type": "null"}],
            "default": None,
            "description": "The container's output in the agent's log; unset: the agent's show_flow_logs",
        },
        "memswap_limit": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "container_create_kwargs": {"anyOf": [{"type": "object"}, {"type": "null"}], "default": None},
        "registry_credentials": {"anyOf": [{"type": "object"}, {"type": "null"}], "default": None},
    }
    return {
        "job_configuration": {name: "{{ " + name + " }}" for name in properties},
        "variables": {"type": "object", "properties": properties},
    }


def container_labels(variables: Mapping[str, Any], origin: str) -> dict[str, str]:
    """The `labels` job variable: a table of strings, none of them the agent's own dagent.* labels."""
    labels = variables.get("labels")
    if labels in (None, {}):
        return {}
    if not isinstance(labels, dict):
        raise RunFileError(f"{origin}: labels: expected a table of label = value, not {type(labels).__name__}")
    found: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(value, (str, int, float, bool)):
            raise RunFileError(f"{origin}: labels: {str(key)[:60]!r} must be a non-empty name with a text value")
        if "\0" in key or "\0" in str(value):
            raise RunFileError(f"{origin}: labels: {key[:60]!r} holds a NUL byte")
        name = docker_label(key)
        if name.startswith("dagent."):
            raise RunFileError(f"{origin}: labels.{key}: the dagent.* prefix is reserved for the agent's own labels")
        found[name] = str(value)
    return found


def docker_label(key: str) -> str:
    """A `namespace/key` label as Prefect's Docker worker writes it: `example.com/x` → `com.example.x`."""
    if "/" not in key:
        return key
    namespace, name = key.split("/", 1)
    return ".".join(reversed(namespace.split("."))) + "." + name


# Prefect's image_pull_policy → dagent's; IfPossible (pull, but run what is there if that fails) is
# the nearest of dagent's three: pull when missing.
PULL_POLICIES = {"IfNotPresent": "if-not-present", "Always": "always", "Never": "never", "IfPossible": "if-not-present"}


def _pull_policy(given: Any, image: Any, origin: str, prefect_rule: bool) -> str | None:
    """The run's pull policy: the one asked for, else Prefect's rule (always for `latest` or no tag)."""
    if given is not None:
        if not isinstance(given, str) or given not in PULL_POLICIES:
            allowed = ", ".join(sorted(PULL_POLICIES))
            raise RunFileError(f"{origin}: image_pull_policy: {str(given)[:40]!r} is not one of {allowed}")
        return PULL_POLICIES[given]
    if not prefect_rule or not isinstance(image, str):
        return None
    try:
        ref = parse_image(image)
    except ValueError:
        return None  # the run's own validation says what is wrong with it
    return "always" if ref.digest is None and ref.tag in (None, "latest") else None


def _create_kwargs(kwargs: Any, data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """container_create_kwargs → run fields, keyword by keyword as create_kwargs.DECISIONS says."""
    if kwargs in (None, {}):
        return {}
    where = f"{origin}: container_create_kwargs"
    if not isinstance(kwargs, dict):
        raise RunFileError(f"{where}: expected a table of docker-py arguments, not {type(kwargs).__name__}")
    fields: dict[str, Any] = {}
    for key, value in kwargs.items():
        decision = DECISIONS.get(key) if isinstance(key, str) else None
        shown = str(key)[:40]
        if decision is None:
            raise RunFileError(f"{where}.{shown}: not a docker-py containers.create argument dagent knows")
        if decision.kind == "worker":
            log.debug("%s.%s: ignored (%s)", where, shown, decision.why)
        elif decision.kind == "refused":
            raise RunFileError(f"{where}.{shown}: refused: {decision.why}")
        else:
            assert decision.field is not None
            fields[decision.field] = _converted(key, value, f"{where}.{shown}")
    return {k: v for k, v in fields.items() if k not in data or data[k] in (None, [], {})}


def _converted(key: str, value: Any, where: str) -> Any:
    """A keyword's value as the run field takes it (the field's own validation does the rest)."""
    if key == "extra_hosts":
        return _extra_hosts(value, where)
    if key == "nano_cpus":
        if not isinstance(value, int) or isinstance(value, bool):
            raise RunFileError(f"{where}: expected a whole number of billionths of a CPU")
        return value / 1e9
    return value


def _extra_hosts(value: Any, where: str) -> Any:
    """extra_hosts as docker-py takes it: a table, or a list of `host:address`."""
    if isinstance(value, list):
        pairs = [str(item).split(":", 1) for item in value]
        if not all(len(pair) == 2 for pair in pairs):
            raise RunFileError(f"{where}.extra_hosts: each entry must be host:address")
        return dict(pairs)
    return value


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def for_container(url: str) -> str:
    """localhost and 127.0.0.1 mean the container itself inside it: point them at the host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("localhost", "127.0.0.1", "::1") or re.match(r"^127\.", host):
        netloc = parts.netloc.replace(f"[{host}]" if ":" in host else host, "host.docker.internal", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def run_request(
    run_id: str,
    variables: Mapping[str, Any],
    default_image: str | None = None,
    implicit_host: bool = False,
    prefect_rule: bool = True,
) -> RunRequest:
    """A rendered job configuration → RunRequest, through the same validation as a run file; RunFileError if bad.

    `implicit_host`: Prefect's worker puts a run on the host's network when its API is on localhost
    and the run names no network; the source says when that applies (and the policy allows it).
    `prefect_rule`: with no image_pull_policy, pull `latest` and untagged images always (Prefect's
    rule); off where the agent's docker.pull is `never`.
    """
    origin = f"flow run {run_id} job_variables"
    data: dict[str, Any] = {"id": run_id}
    for key in _DIRECT:
        if variables.get(key) not in (None, [], {}):
            data[key] = variables[key]
    if isinstance(data.get("env"), dict):
        # As Prefect: values become text, and a null removes the key.
        data["env"] = {k: v if isinstance(v, str) else str(v) for k, v in data["env"].items() if v is not None}
    data.setdefault("image", default_image)
    if data["image"] is None:
        raise RunFileError(f"{origin}: image: not set (set the job variable `image`, or api.default_image)")
    pull = _pull_policy(variables.get("image_pull_policy"), data["image"], origin, prefect_rule)
    if pull is not None:
        data["pull"] = pull
    command = variables.get("command")
    # A string is split by RunRequest itself, which reports an unbalanced quote as bad input.
    data["command"] = command if command and not _blank(command) else list(DEFAULT_COMMAND)
    if variables.get("mem_limit") is not None:
        data["memory"] = variables["mem_limit"]
    if variables.get("memswap_limit") is not None:
        data["memory_swap"] = variables["memswap_limit"]
    if variables.get("required_labels"):
        data["labels"] = variables["required_labels"]
    network_mode, networks = variables.get("network_mode"), variables.get("networks") or []
    if network_mode:
        data["network"] = network_mode
    elif isinstance(networks, list) and networks:
        data["network"], data["networks"] = networks[0], networks[1:]  # the rest are joined after create
    elif implicit_host:
        data["network"] = "host"
    data.update(_create_kwargs(variables.get("container_create_kwargs"), data, origin))
    if variables.get("auto_remove") is True:
        data["keep"] = "never"  # dagent reads the exit code first, then removes it (not Docker's AutoRemove)
    container_labels(variables, origin)
    unknown = set(variables) - set(_DIRECT) - _IGNORED - _MAPPED
    if unknown:
        log.debug("flow run %s: ignoring job variables %s", run_id, sorted(unknown))
    return parse_run(data, origin)


_MAPPED = frozenset(
    {
        "command",
        "mem_limit",
        "memswap_limit",
        "required_labels",
        "network_mode",
        "networks",
        "labels",
        "container_create_kwargs",
        "auto_remove",
        "stream_output",
        "image_pull_policy",
        "registry_credentials",
    }
)


@dataclass(frozen=True)
class FlowRunContext:
    """What a claimed flow run's container needs to know of Prefect: the run, its deployment, its flow."""

    flow_run: Mapping[str, Any]
    deployment: Mapping[str, Any] | None
    flow_name: str | None


def container_origin(
    run_id: str,
    context: FlowRunContext,
    variables: Mapping[str, Any],
    *,
    api_url: str,
    container_url: str | None,
    docker_interface: bool,
    work_pool: str,
    work_pool_id: str,
    worker: str,
    token: SecretStr | None,
    auth_string: SecretStr | None,
    implicit_host: bool = False,
    passed_settings: Mapping[str, str] | None = None,
) -> Origin:
    """What the container must carry: how to reach the API, which run it is, Prefect's labels."""
    url = _api_url_inside(variables, api_url, container_url, docker_interface, implicit_host)
    flow_run, deployment = context.flow_run, context.deployment or {}
    # Prefect's worker sets these too; the run's own env may change them, as there.
    attribution = {
        "PREFECT_API_URL": url,
        "PREFECT__WORKER_NAME": worker,
        "PREFECT__FLOW_ID": str(flow_run.get("flow_id") or ""),
        "PREFECT__FLOW_NAME": context.flow_name or "",
        "PREFECT__DEPLOYMENT_ID": str(flow_run.get("deployment_id") or ""),
        "PREFECT__DEPLOYMENT_NAME": str(deployment.get("name") or ""),
    }
    base_env = {k: v for k, v in attribution.items() if v}
    env = {"PREFECT__FLOW_RUN_ID": run_id}
    # The agent's settings named in api.pass_settings: kept as secrets (never shown), as any may hold one.
    secret_env = {name: SecretStr(value) for name, value in (passed_settings or {}).items() if name not in base_env}
    if token is not None:
        secret_env["PREFECT_API_KEY"] = token
    elif auth_string is not None:
        secret_env["PREFECT_API_AUTH_STRING"] = auth_string
    labels = _prefect_labels(run_id, context, work_pool, work_pool_id, worker)
    run_labels = container_labels(variables, f"flow run {run_id} job_variables")
    stream = variables.get("stream_output")
    registry_auth = registry_login(variables.get("registry_credentials"), f"flow run {run_id} job_variables")
    return Origin(
        registry_auth=registry_auth,
        source="prefect",
        env=env,
        secret_env=secret_env,
        labels=labels,
        run_labels=run_labels,
        base_env=base_env,
        stream_output=stream if isinstance(stream, bool) else None,
    )


def _api_url_inside(
    variables: Mapping[str, Any], api_url: str, container_url: str | None, docker_interface: bool, implicit_host: bool
) -> str:
    """The API's URL as the container reaches it: api.container_url, else the agent's own on the host's
    network (or without the Docker interface), else the agent's with its host seen from a container."""
    mode = variables.get("network_mode")
    host_network = mode == "host" or (not mode and not variables.get("networks") and implicit_host)
    if container_url:
        return container_url
    if host_network or not docker_interface:
        return api_url
    return for_container(api_url)


def _prefect_labels(
    run_id: str, context: FlowRunContext, work_pool: str, work_pool_id: str, worker: str
) -> dict[str, str]:
    """The container labels Prefect's worker gives a flow run's container."""
    flow_run, deployment = context.flow_run, context.deployment or {}
    labels = {
        "io.prefect.flow-run-id": run_id,
        "io.prefect.flow-run-name": str(flow_run.get("name") or ""),
        "io.prefect.deployment-id": str(deployment.get("id") or ""),
        "io.prefect.deployment-name": str(deployment.get("name") or ""),
        "io.prefect.flow-id": str(flow_run.get("flow_id") or ""),
        "io.prefect.flow-name": context.flow_name or "",
        "io.prefect.work-pool-name": work_pool,
        "io.prefect.work-pool-id": work_pool_id,
        "io.prefect.worker-name": worker,
        "io.prefect.version": "dagent-" + __version__,
    }
    updated = _utc(deployment.get("updated"))
    if updated:
        labels["io.prefect.deployment-updated"] = updated
    return labels


def registry_login(block: Any, origin: str) -> RegistryLogin | None:
    """Prefect's `registry_credentials` (a docker-registry-credentials block's data) → a RegistryLogin."""
    if block in (None, {}):
        return None
    if not isinstance(block, dict) or not all(isinstance(block.get(k), str) for k in ("username", "password")):
        raise RunFileError(f"{origin}: registry_credentials: needs a docker-registry-credentials block's data")
    address = str(block.get("registry_url") or "docker.io").split("://")[-1].rstrip("/")
    try:
        registry = normalize_registry(address)
    except ValueError as e:
        raise RunFileError(f"{origin}: registry_credentials.registry_url: {e}") from None
    return RegistryLogin(registry, block["username"], SecretStr(block["password"]))


def _utc(stamp: Any) -> str | None:
    """An API timestamp as Python's UTC isoformat (what Prefect's worker puts in a label)."""
    parsed = parse_time(stamp)
    return parsed.isoformat() if parsed else None
