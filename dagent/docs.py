"""Documents generated from the model: the JSON schema, config/agent.toml and the tables of docs/.

`python -m dagent.docs` rewrites them; tests fail when a committed copy is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dagent.config import (
    COMPAT_ENV,
    TOKEN_ENV,
    AgentConfig,
    describe,
    describe_config,
    env_name,
    json_schema,
    leaf_keys,
)
from dagent.flags import CONFIG_FLAGS
from dagent.flags import toml_value as _toml_value
from dagent.runs import RunRequest

describe_config()  # descriptions are read from the source only when documents are made
describe(RunRequest)

# Values shown for keys that are unset by default, so an uncommented line is a working example.
EXAMPLES: dict[str, Any] = {
    "max_polls": 100,
    "poll_interval": 1.0,
    "api.url": "http://127.0.0.1:4200/api",
    "api.container_url": "http://prefect.internal:4200/api",
    "api.default_image": "127.0.0.1:5000/flows/base:3",
    "api.token": "pnu_...",
    "api.token_file": "/etc/dagent/token",
    "api.auth_string": "admin:pass",
    "docker.registry_allow_list": ["docker.io", "127.0.0.1:5000"],
    "docker.network": "flows",
    "docker.max_cpus": 2.0,
    "docker.max_memory": "4g",
    "health.address": "127.0.0.1:8080",
    "docker.tls.enabled": True,
    "docker.tls.ca_cert": "/etc/dagent/docker/ca.pem",
    "docker.tls.client_cert": "/etc/dagent/docker/cert.pem",
    "docker.tls.client_key": "/etc/dagent/docker/key.pem",
    "docker.tls.cert_path": "/etc/dagent/docker",
}
# Seed `DockerAgent` arguments (Prefect 1) and where each lives now.
SEED_ARGUMENTS: tuple[tuple[str, str], ...] = (
    ("name", "name"),
    ("labels", "labels"),
    ("env_vars", "docker.env"),
    ("max_polls", "max_polls"),
    ("agent_address", "health.address"),
    ("no_cloud_logs", "api.send_agent_logs"),
    ("base_url", "docker.base_url"),
    ("no_pull", "docker.pull"),
    ("volumes", "docker.volumes"),
    ("show_flow_logs", "show_flow_logs"),
    ("network", "docker.network"),
    ("docker_interface", "docker.docker_interface"),
    ("reg_allow_list", "docker.registry_allow_list"),
    ("token", "api.token"),
)
_SEED_NOTES = {
    "no_cloud_logs": "inverse: `--no-cloud-logs` sets it to `false`",
    "no_pull": '`--no-pull` sets `"never"`',
    "token": "also `api.token_file`; order under Configuration above",
}
README_BEGIN, README_END = "<!-- reference:begin -->", "<!-- reference:end -->"
RUNFILE_BEGIN, RUNFILE_END = "<!-- runfile:begin -->", "<!-- runfile:end -->"
KWARGS_BEGIN, KWARGS_END = "<!-- createkwargs:begin -->", "<!-- createkwargs:end -->"
PREFECT_PAGE = "docs/prefect.md"


def _field(dotted: str) -> Any:
    model: Any = AgentConfig
    *parents, leaf = dotted.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf]


def _default(dotted: str) -> Any:
    # The raw field default: no environment, no file, no cwd (inbox.path stays "runs").
    value = _field(dotted).get_default(call_default_factory=True)
    return str(value) if isinstance(value, Path) else value


def _one_line(text: str | None) -> str:
    return " ".join(str(text).split())


def _env_names(dotted: str) -> list[str]:
    names = [env_name(dotted)]
    names += [name for name, key in COMPAT_ENV.items() if key == dotted]
    if dotted == "api.token":
        names += list(TOKEN_ENV)
    return names


def _flags(dotted: str) -> list[str]:
    return ["/".join(f.flags) for f in CONFIG_FLAGS if f.key == dotted]


def _type(dotted: str) -> str:
    schema = json_schema()
    node: dict[str, Any] = schema
    for part in dotted.split("."):
        prop = node["properties"][part]
        node = schema["$defs"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else prop
    return _describe(node, schema)


def _describe(node: dict[str, Any], schema: dict[str, Any]) -> str:
    if "anyOf" in node:
        kinds = [_describe(n, schema) for n in node["anyOf"] if n.get("type") != "null"]
        return " or ".join(kinds)
    if "$ref" in node:
        return "table"
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    if node.get("const") is not None:
        return json.dumps(node["const"])
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"list of {_describe(node.get('items', {}), schema)}"
    if kind == "object":
        return "table of string"
    return {"string": "string", "integer": "int", "number": "float", "boolean": "bool"}.get(kind, kind)


def reference_toml() -> str:
    """config/agent.toml: every key, commented, with its default, env names and flags."""
    lines = [
        "#:schema ../schemas/agent.schema.json",
        "# dagent configuration: every key with its default. Uncomment and edit what you need.",
        "# Precedence: command-line flags > environment (DAGENT_*, `__` between levels) > this file > defaults.",
        "# Relative paths in this file are relative to this file. Check it with `dagent config validate`.",
    ]
    section = ""
    keys = leaf_keys()
    tops = list(dict.fromkeys(k.split(".")[0] if "." in k else "" for k in keys))
    # A table's own keys before its sub-tables ([docker] before [docker.tls]): TOML allows no return.
    keys.sort(key=lambda k: (tops.index(k.split(".")[0] if "." in k else ""), k.count(".")))
    for dotted in keys:
        current = dotted.rsplit(".", 1)[0] if "." in dotted else ""
        if current != section:
            section = current
            lines += ["", f"[{section}]"]
        field = _field(dotted)
        default = _default(dotted)
        lines.append("")
        lines.append(f"# {_one_line(field.description)}")
        where = "env " + ", ".join(_env_names(dotted))
        if _flags(dotted):
            where += " · flag " + ", ".join(_flags(dotted))
        lines.append(f"# {where}")
        leaf = dotted.rsplit(".", 1)[-1]
        if default is None:
            lines.append(f"# unset by default; e.g. {leaf} = {_toml_value(EXAMPLES.get(dotted, ''))}")
        elif dotted == "docker.registry_auth":
            lines.append(f'# e.g. {leaf} = [{{ registry = "127.0.0.1:5000", username = "ci", password_file = "pw" }}]')
        else:
            lines.append(f"# {leaf} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """The README's configuration reference and seed-argument tables."""
    rows = ["| key | type | default | environment | flag | description |", "|---|---|---|---|---|---|"]
    for dotted in leaf_keys():
        default = _default(dotted)
        shown = "unset" if default is None else f"`{_toml_value(default)}`"
        if dotted == "poll_interval":
            shown = "1 (inbox), 10 (prefect)"
        if dotted == "docker.base_url":
            shown = "`unix:///var/run/docker.sock` (Windows: `npipe:////./pipe/docker_engine`)"
        envs = "<br>".join(f"`{n}`" for n in _env_names(dotted))
        flags = "<br>".join(f"`{f}`" for f in _flags(dotted)) or ""
        description = _one_line(_field(dotted).description).replace("|", "\\|")
        rows.append(f"| `{dotted}` | {_type(dotted)} | {shown} | {envs} | {flags} | {description} |")
    seed = ["| `DockerAgent` argument | key | environment | flag | note |", "|---|---|---|---|---|"]
    for argument, dotted in SEED_ARGUMENTS:
        envs = "<br>".join(f"`{n}`" for n in _env_names(dotted))
        flags = "<br>".join(f"`{f}`" for f in _flags(dotted))
        seed.append(f"| `{argument}` | `{dotted}` | {envs} | {flags} | {_SEED_NOTES.get(argument, '')} |")
    return "\n".join(
        [
            README_BEGIN,
            "<!-- generated by `python -m dagent.docs`; edit dagent/config/models.py, not this table -->",
            "",
            *rows,
            "",
            "Every seed `DockerAgent` argument (Prefect 1) has a home:",
            "",
            *seed,
            README_END,
        ]
    )


def run_fields_markdown() -> str:
    """The README's table of run-file fields, from RunRequest."""
    rows = ["| field | type | description |", "|---|---|---|"]
    schema = RunRequest.model_json_schema()
    for name, field in RunRequest.model_fields.items():
        kind = _describe(schema["properties"][name], schema)
        description = str(field.description).replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {description} |")
    return "\n".join(
        [RUNFILE_BEGIN, "<!-- generated by `python -m dagent.docs` from dagent/runs.py -->", "", *rows, RUNFILE_END]
    )


def schema_text() -> str:
    """schemas/agent.schema.json as committed."""
    return json.dumps(json_schema(), indent=2) + "\n"


# Where each generated table lives.
CONFIG_PAGE = Path("docs") / "configuration.md"
RUNS_PAGE = Path("docs") / "runs-and-policy.md"


def create_kwargs_markdown() -> str:
    """The decision for every container_create_kwargs keyword (dagent/sources/prefect/create_kwargs.py)."""
    from dagent.sources.prefect.create_kwargs import markdown

    note = "<!-- generated by `python -m dagent.docs` from dagent/sources/prefect/create_kwargs.py -->"
    return "\n".join([KWARGS_BEGIN, note, "", markdown(), KWARGS_END])


def write_all(repo: Path) -> None:
    """Regenerate the schema, the reference agent.toml and the generated tables of the docs pages under repo."""
    (repo / "schemas" / "agent.schema.json").write_text(schema_text(), encoding="utf-8")
    (repo / "config" / "agent.toml").write_text(reference_toml(), encoding="utf-8")
    for page, begin, end, content in (
        (CONFIG_PAGE, README_BEGIN, README_END, reference_markdown()),
        (RUNS_PAGE, RUNFILE_BEGIN, RUNFILE_END, run_fields_markdown()),
        (PREFECT_PAGE, KWARGS_BEGIN, KWARGS_END, create_kwargs_markdown()),
    ):
        path = repo / page
        text = path.read_text(encoding="utf-8")
        start, stop = text.index(begin), text.index(end) + len(end)
        path.write_text(text[:start] + content + text[stop:], encoding="utf-8")


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
