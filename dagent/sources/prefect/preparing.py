"""How a flow run of the pool becomes what dagent runs: its job configuration rendered from the pool's
base job template as Prefect renders it, the RunRequest it makes, and the Origin its container carries."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dagent.config import AgentConfig
from dagent.errors import ConfigError, one_line
from dagent.runs import RunRequest
from dagent.sources.prefect import jobvars, template
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.jobvars import FlowRunContext, base_job_template
from dagent.sources.prefect.lookups import Lookups
from dagent.spec import Origin


@dataclass(frozen=True)
class Pool:
    """The work pool as `connect` read it (replaced whole, never changed)."""

    id: str = ""
    template: dict[str, Any] = field(default_factory=base_job_template)
    server_version: str | None = None


class RunPreparer:
    """Makes a flow run's job configuration, RunRequest and Origin for one pool and configuration."""

    def __init__(self, config: AgentConfig, client: PrefectClient, lookups: Lookups) -> None:
        self.config = config
        self.api = config.api
        self.client = client
        self.lookups = lookups
        self.pool = Pool()

    def template_to_create(self) -> dict[str, Any]:
        """api.base_job_template (`--base-job-template`), else dagent's own template."""
        path = self.api.base_job_template
        if path is None:
            return base_job_template()
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"api.base_job_template {path}: not a readable JSON file ({one_line(e)})") from None
        if not isinstance(given, dict) or not isinstance(given.get("job_configuration"), dict):
            raise ConfigError(f"api.base_job_template {path}: needs job_configuration and variables tables")
        return given

    def job_variables(self, flow_run: Mapping[str, Any], deployment: Mapping[str, Any] | None) -> dict[str, Any]:
        """The run's job configuration, rendered from the pool's base job template as Prefect renders it."""
        values = template.job_variables((deployment or {}).get("job_variables"), flow_run.get("job_variables"))
        config = template.render(self.pool.template, values)
        if template.references(config):
            config = template.resolve(config, self.lookups.reference)
        if "required_labels" in values and "required_labels" not in config:
            config["required_labels"] = values["required_labels"]  # dagent's routing, on any pool's template
        return config

    def run_request(self, run_id: str, variables: Mapping[str, Any]) -> RunRequest:
        """The RunRequest the run's job configuration makes (RunFileError naming the variable if none)."""
        never = self.config.docker.pull == "never"  # the operator's word over Prefect's default rule
        return jobvars.run_request(run_id, variables, self.default_image(), self.implicit_host(), not never)

    def default_image(self) -> str | None:
        """api.default_image, else the image Prefect's worker picks: the server's Prefect on this Python."""
        if self.api.default_image or not self.pool.server_version:
            return self.api.default_image
        return f"prefecthq/prefect:{self.pool.server_version}-python{sys.version_info.major}.{sys.version_info.minor}"

    def implicit_host(self) -> bool:
        """Prefect's rule: a run that names no network gets the host's when the API is on localhost.

        dagent follows it only where its policy allows the host's network; elsewhere such a run
        stays on the default bridge and reaches the API through host.docker.internal.
        """
        host = (urlsplit(self.api.container_url or self.client.url).hostname or "").lower()
        return self.config.docker.allow_host_network and host in ("127.0.0.1", "localhost")

    def origin(self, run_id: str, context: FlowRunContext, variables: Mapping[str, Any]) -> Origin:
        """What the run's container carries: how to reach the API, which run it is, Prefect's labels."""
        api = self.api
        return jobvars.container_origin(
            run_id, context, variables, api_url=self.client.url, container_url=api.container_url,
            docker_interface=self.config.docker.docker_interface, work_pool=api.work_pool,
            work_pool_id=self.pool.id, worker=self.config.name, token=api.token,
            auth_string=api.auth_string, implicit_host=self.implicit_host(),
            passed_settings={name: os.environ[name] for name in api.pass_settings if name in os.environ},
        )  # fmt: skip
