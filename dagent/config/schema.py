"""Field docs read from the source, and the JSON schema of agent.toml (only for docs and `config schema`)."""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from typing import Any

from pydantic import (
    BaseModel,
)

from dagent.config.models import (
    AgentConfig,
    ApiConfig,
    DockerConfig,
    DockerTLS,
    HealthConfig,
    InboxConfig,
    RegistryAuth,
    RetryConfig,
)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name → the docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def describe(*models: type[BaseModel]) -> None:
    """Give the models' fields the docstrings written under them, for schemas and docs.

    Pydantic's use_attribute_docstrings does this at import, reading and parsing the source: a
    fifth of an agent's start-up. Only `config schema` and `python -m dagent.docs` need it.
    """
    for model in models:
        if getattr(model, "__dagent_described__", False):
            continue
        for name, doc in attribute_docs(model).items():
            if name in model.model_fields and model.model_fields[name].description is None:
                model.model_fields[name].description = doc
        model.model_rebuild(force=True)
        model.__dagent_described__ = True  # type: ignore[attr-defined]


def describe_config() -> None:
    """Field descriptions on the configuration models (sections first: the agent's schema is built from theirs)."""
    describe(ApiConfig, RegistryAuth, DockerTLS, DockerConfig, HealthConfig, InboxConfig, RetryConfig, AgentConfig)


def json_schema() -> dict[str, Any]:
    """The JSON schema of agent.toml (what `dagent config schema` prints and schemas/ holds)."""
    describe_config()
    schema = AgentConfig.model_json_schema()
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
