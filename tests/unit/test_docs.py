"""Generated documents are current, and every shipped config validates by the model and the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from dagent import docs
from dagent._compat import tomllib
from dagent.config import load_config
from tests.support import REPO

CONFIG_FILES = sorted([REPO / "config" / "agent.toml", *REPO.glob("examples/*/agent.toml")])


def test_schema_is_current() -> None:
    """schemas/agent.schema.json equals what the model generates (run `python -m dagent.docs`)."""
    assert (REPO / "schemas" / "agent.schema.json").read_text() == docs.schema_text()


def test_reference_toml_is_current() -> None:
    """config/agent.toml equals what the model generates (run `python -m dagent.docs`)."""
    assert (REPO / "config" / "agent.toml").read_text() == docs.reference_toml()


def test_docs_reference_is_current() -> None:
    """The configuration and run-file tables of docs/ equal what the model generates (run `python -m dagent.docs`)."""
    assert docs.reference_markdown() in (REPO / docs.CONFIG_PAGE).read_text()
    assert docs.run_fields_markdown() in (REPO / docs.RUNS_PAGE).read_text()


def test_every_key_and_seed_argument_is_documented() -> None:
    """Each key has a description; each seed DockerAgent argument maps to a real key."""
    table = docs.reference_markdown()
    for argument in ("name", "labels", "env_vars", "max_polls", "agent_address", "no_cloud_logs", "base_url"):
        assert f"| `{argument}` |" in table
    for argument in ("no_pull", "volumes", "show_flow_logs", "network", "docker_interface", "reg_allow_list", "token"):
        assert f"| `{argument}` |" in table
    assert "| None |" not in table


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_config_validates(path: Path) -> None:
    """Reference and example files load with the model and validate against the JSON schema."""
    load_config({}, path, environ={})
    data = tomllib.loads(path.read_text())
    jsonschema.validate(data, json.loads((REPO / "schemas" / "agent.schema.json").read_text()))
    assert path.read_text().startswith("#:schema ")


def test_schema_rejects_what_the_model_rejects() -> None:
    """The schema catches unknown keys and bad enum values, as editors should."""
    schema = json.loads((REPO / "schemas" / "agent.schema.json").read_text())
    for bad in ({"nmae": "x"}, {"docker": {"pull": "sometimes"}}, {"concurrency": 0}, {"docker": {"foo": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_env_only_example_validates() -> None:
    """examples/ci/dagent.env is a complete configuration by itself."""
    environ = {}
    for line in (REPO / "examples" / "ci" / "dagent.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            environ[key] = value
    loaded = load_config({}, None, environ=environ)
    assert loaded.path is None and loaded.config.source == "prefect" and loaded.config.docker.env == {"CI": "true"}


def test_the_create_kwargs_table_is_current() -> None:
    """docs/prefect.md's container_create_kwargs table equals the decisions in the code (`python -m dagent.docs`)."""
    assert docs.create_kwargs_markdown() in (REPO / docs.PREFECT_PAGE).read_text()
