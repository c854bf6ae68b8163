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
from dagent.runs import RunRequest, parse_run
from dagent.spec import Origin

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
# Prefect docker-pool variables dagent decides itself (names, removal, streaming) and so ignores.
_IGNORED = frozenset(
    {"name", "auto_remove", "stream_output", "image_pull_policy", "registry_credentials", "memswap_limit"}
)


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
        if key.startswith("dagent."):
            raise RunFileError(f"{origin}: labels.{key}: the dagent.* prefix is reserved for the agent's own labels")
        if "\0" in key or "\0" in str(value):
            raise RunFileError(f"{origin}: labels: {key[:60]!r} holds a NUL byte")
        found[key] = str(value)
    return found


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


def merge(*layers: Any) -> dict[str, Any]:
    """Pool defaults ⊕ deployment ⊕ flow run; `env` merges key by key, other keys replace."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if not isinstance(layer, dict):  # Prefect's API holds tables here; anything else is no layer
            continue
        for key, value in layer.items():
            if key == "env" and isinstance(value, dict) and isinstance(merged.get("env"), dict):
                merged["env"] = {**merged["env"], **value}
            else:
                merged[key] = value
    return merged


def run_request(run_id: str, variables: Mapping[str, Any], default_image: str | None = None) -> RunRequest:
    """Job variables → RunRequest, through the same validation as a run file; RunFileError if bad."""
    origin = f"flow run {run_id} job_variables"
    data: dict[str, Any] = {"id": run_id}
    for key in _DIRECT:
        if variables.get(key) not in (None, [], {}):
            data[key] = variables[key]
    data.setdefault("image", default_image)
    if data["image"] is None:
        raise RunFileError(f"{origin}: image: not set (set the job variable `image`, or api.default_image)")
    command = variables.get("command")
    # A string is split by RunRequest itself, which reports an unbalanced quote as bad input.
    data["command"] = command if command and not _blank(command) else list(DEFAULT_COMMAND)
    if variables.get("mem_limit") is not None:
        data["memory"] = variables["mem_limit"]
    if variables.get("required_labels"):
        data["labels"] = variables["required_labels"]
    network_mode, networks = variables.get("network_mode"), variables.get("networks") or []
    if network_mode:
        data["network"] = network_mode
    elif isinstance(networks, list) and networks:
        data["network"] = networks[0]
        if len(networks) > 1:
            log.warning("flow run %s: joining network %s only, not %s", run_id, networks[0], networks[1:])
    if variables.get("container_create_kwargs"):
        # Raw docker-py arguments would go around every policy rule.
        raise RunFileError(f"{origin}: container_create_kwargs: not supported; use dagent's job variables")
    container_labels(variables, origin)
    unknown = set(variables) - set(_DIRECT) - _IGNORED - _MAPPED
    if unknown:
        log.debug("flow run %s: ignoring job variables %s", run_id, sorted(unknown))
    return parse_run(data, origin)


_MAPPED = frozenset(
    {"command", "mem_limit", "required_labels", "network_mode", "networks", "labels", "container_create_kwargs"}
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
    worker: str,
    token: SecretStr | None,
    auth_string: SecretStr | None,
) -> Origin:
    """What the container must carry: how to reach the API, which run it is, Prefect's labels."""
    host_network = variables.get("network_mode") == "host"
    if container_url:
        url = container_url
    elif host_network or not docker_interface:
        url = api_url
    else:
        url = for_container(api_url)
    env = {"PREFECT_API_URL": url, "PREFECT__FLOW_RUN_ID": run_id}
    secret_env = {}
    if token is not None:
        secret_env["PREFECT_API_KEY"] = token
    elif auth_string is not None:
        secret_env["PREFECT_API_AUTH_STRING"] = auth_string
    flow_run, deployment = context.flow_run, context.deployment or {}
    labels = {
        "io.prefect.flow-run-id": run_id,
        "io.prefect.flow-run-name": str(flow_run.get("name") or ""),
        "io.prefect.deployment-id": str(deployment.get("id") or ""),
        "io.prefect.deployment-name": str(deployment.get("name") or ""),
        "io.prefect.flow-id": str(flow_run.get("flow_id") or ""),
        "io.prefect.flow-name": context.flow_name or "",
        "io.prefect.work-pool-name": work_pool,
        "io.prefect.worker-name": worker,
        "io.prefect.version": "dagent-" + __version__,
    }
    run_labels = container_labels(variables, f"flow run {run_id} job_variables")
    return Origin(source="prefect", env=env, secret_env=secret_env, labels=labels, run_labels=run_labels)
