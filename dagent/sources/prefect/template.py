"""A work pool's base job template, rendered as Prefect renders it (pure).

Prefect builds a run's job configuration from the pool's `base_job_template`: the variables' defaults
(nulls left out), then the deployment's job variables, then the flow run's (`env` merged key by key,
everything else replaced; `a.b` keys set nested values), applied to the `{{ placeholders }}` of
`job_configuration`. A value written in `job_configuration` without a placeholder is pinned: no job
variable changes it. `{{ prefect.variables.NAME }}` and `{{ prefect.blocks.TYPE.NAME }}` are left for
the source to look up (`references`, `resolve`).

One deliberate difference: Prefect's worker fills `{{ $NAME }}` from its own environment, so a job
variable can copy the worker's secrets (an API key, a registry password) into a container. Here
`{{ $NAME }}` is always empty: the agent's environment is never a source of job values.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

PLACEHOLDER_RE = re.compile(r"({{\s*([\w.\-\[\]$]+)\s*}})")
BLOCK_PREFIX = "prefect.blocks."
VARIABLE_PREFIX = "prefect.variables."
ENV_PREFIX = "$"


class _NotSet:
    """A placeholder with no value: its key is left out of the rendered configuration."""

    def __repr__(self) -> str:
        return "NOT_SET"


NOT_SET: Any = _NotSet()


def job_variables(deployment: Mapping[str, Any] | None, flow_run: Mapping[str, Any] | None) -> dict[str, Any]:
    """The deployment's job variables overridden by the flow run's; `env` merges key by key."""
    merged: dict[str, Any] = dict(deployment) if isinstance(deployment, Mapping) else {}
    overrides = dict(flow_run) if isinstance(flow_run, Mapping) else {}
    if isinstance(merged.get("env"), dict):
        run_env = overrides.pop("env", None)
        merged["env"] = {**merged["env"], **(run_env if isinstance(run_env, dict) else {})}
    merged.update(overrides)
    return merged


def defaults(template: Mapping[str, Any]) -> dict[str, Any]:
    """The variables' defaults, nulls left out (a missing key is what makes a placeholder unset)."""
    properties = ((template.get("variables") or {}).get("properties")) or {}
    return {
        name: attrs["default"]
        for name, attrs in properties.items()
        if isinstance(attrs, dict) and attrs.get("default") is not None
    }


def render(template: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The job configuration for these job variables; `{{ $NAME }}` placeholders render empty."""
    config: dict[str, Any] = copy.deepcopy(dict(template.get("job_configuration") or {}))
    variables = defaults(template)
    # As Prefect: only a non-empty default env joins (or replaces) the template's env before values apply.
    if isinstance(variables.get("env"), dict) and variables["env"]:
        config["env"] = (
            {**config["env"], **variables["env"]} if isinstance(config.get("env"), dict) else variables["env"]
        )
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if "." in key:
            _set_dotted(nested, key, value)
    for key, value in values.items():
        if "." not in key:
            both = isinstance(nested.get(key), dict) and isinstance(value, dict)
            nested[key] = _deep_merge(nested[key], value) if both else value
    variables.update(nested)
    if isinstance(config.get("env"), dict) and isinstance(variables.get("env"), dict) and variables["env"]:
        config["env"] = {**config["env"], **variables["env"]}
    rendered = apply(config, variables)
    return rendered if isinstance(rendered, dict) else {}


def apply(template: Any, values: Mapping[str, Any]) -> Any:
    """Fill placeholders: a lone one is replaced by its value (any type), others by its text; unset keys go."""
    if isinstance(template, str):
        found = PLACEHOLDER_RE.findall(template)
        standard = [(whole, name) for whole, name in found if not name.startswith((BLOCK_PREFIX, VARIABLE_PREFIX))]
        if not standard:
            return template
        if len(found) == 1 and found[0][0] == template and not found[0][1].startswith(ENV_PREFIX):
            return lookup(values, found[0][1])
        for whole, name in standard:
            # `$NAME` is never the agent's own environment (see the module's docstring).
            value = NOT_SET if name.startswith(ENV_PREFIX) else lookup(values, name)
            template = template.replace(whole, "" if value is NOT_SET else str(value))
        return template
    if isinstance(template, dict):
        filled = {key: apply(value, values) for key, value in template.items()}
        return {key: value for key, value in filled.items() if value is not NOT_SET}
    if isinstance(template, list):
        items = [apply(value, values) for value in template]
        return [value for value in items if value is not NOT_SET]
    return template


def lookup(values: Mapping[str, Any], path: str) -> Any:
    """`a.b[0].c` in nested values; NOT_SET when any step is missing."""
    node: Any = values
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                return NOT_SET
            node = node[index]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return NOT_SET
    return node


BLOCK_ID_PREFIX = "prefect.block-document-id."


def _block_ref(value: Any) -> str | None:
    """`{"$ref": {"block_document_id": ID}}`, the form Prefect's UI writes for a chosen block → a name for it."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("$ref"), dict):
        block_id = value["$ref"].get("block_document_id")
        if isinstance(block_id, str):
            return BLOCK_ID_PREFIX + block_id
    return None


def references(config: Any) -> set[str]:
    """Every `prefect.variables.*` and `prefect.blocks.*` placeholder (and `$ref` to a block) left in a
    rendered configuration."""
    if (ref := _block_ref(config)) is not None:
        return {ref}
    if isinstance(config, str):
        return {name for _, name in PLACEHOLDER_RE.findall(config) if name.startswith((BLOCK_PREFIX, VARIABLE_PREFIX))}
    if isinstance(config, dict):
        return set().union(*(references(v) for v in config.values())) if config else set()
    if isinstance(config, list):
        return set().union(*(references(v) for v in config)) if config else set()
    return set()


def resolve(config: Any, found: Callable[[str], Any]) -> Any:
    """Replace the references `found(name)` knows: a lone one by its value, others by its text."""
    if (ref := _block_ref(config)) is not None:
        return found(ref)
    if isinstance(config, str):
        matches = [(w, n) for w, n in PLACEHOLDER_RE.findall(config) if n.startswith((BLOCK_PREFIX, VARIABLE_PREFIX))]
        if len(matches) == 1 and matches[0][0] == config:
            return found(matches[0][1])
        for whole, name in matches:
            config = config.replace(whole, str(found(name)))
        return config
    if isinstance(config, dict):
        return {key: resolve(value, found) for key, value in config.items()}
    if isinstance(config, list):
        return [resolve(value, found) for value in config]
    return config


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[last] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = _deep_merge(merged[key], value) if both else value
    return merged
