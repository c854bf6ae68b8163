"""Rendering a pool's base job template as Prefect does (pure), on Prefect's own docker template.

`prefect_docker_template.json` is what `prefect work-pool get-default-base-job-template --type docker`
prints (prefect-docker 0.7.4); the conformance suite checks the same rules against the real worker.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dagent.sources.prefect.template import NOT_SET, apply, job_variables, lookup, references, render, resolve

DOCKER = json.loads((Path(__file__).parent / "prefect_docker_template.json").read_text())


def _template(**defaults: Any) -> dict[str, Any]:
    template = copy.deepcopy(DOCKER)
    for name, value in defaults.items():
        template["variables"]["properties"][name]["default"] = value
    return template


def test_defaults_fill_the_placeholders_and_nulls_leave_keys_out() -> None:
    config = render(_template(image="busybox:1"), {})
    assert config["image"] == "busybox:1" and config["auto_remove"] is False and config["stream_output"] is True
    assert "command" not in config and "mem_limit" not in config and "env" not in config  # no value, no key


def test_deployment_then_flow_run_with_env_merged_key_by_key() -> None:
    values = job_variables({"env": {"A": "1", "B": "2"}, "image": "x:1"}, {"env": {"B": "3"}, "image": "y:2"})
    assert values == {"env": {"A": "1", "B": "3"}, "image": "y:2"}
    config = render(_template(env={"POOL": "p"}), values)
    assert config["env"] == {"POOL": "p", "A": "1", "B": "3"} and config["image"] == "y:2"


def test_a_null_env_value_survives_rendering_for_the_worker_to_drop() -> None:
    config = render(_template(env={"POOL": "p"}), {"env": {"POOL": None}})
    assert config["env"] == {"POOL": None}


def test_a_value_pinned_in_job_configuration_cannot_be_changed() -> None:
    template = _template()
    template["job_configuration"]["auto_remove"] = False
    template["job_configuration"]["labels"] = {"team": "{{ team }}", "fixed": "yes"}
    config = render(template, {"auto_remove": True, "team": "etl", "labels": {"x": "1"}})
    assert config["auto_remove"] is False and config["labels"] == {"team": "etl", "fixed": "yes"}


def test_dotted_keys_set_nested_values_and_plain_keys_win() -> None:
    values = {"env.A": "dotted", "env.B": "dotted", "env": {"B": "plain"}}
    assert render(_template(), values)["env"] == {"A": "dotted", "B": "plain"}


def test_placeholders_inside_text_and_env_placeholders() -> None:
    template = {"job_configuration": {"name": "run-{{ team }}-{{ missing }}", "home": "{{ $HOME }}/x"},
                "variables": {"properties": {}}}  # fmt: skip
    assert render(template, {"team": "etl"}) == {"name": "run-etl-", "home": "/x"}


def test_lone_placeholders_keep_their_type_and_paths_index_lists() -> None:
    values = {"a": {"b": [{"c": 5}]}}
    assert apply("{{ a.b[0].c }}", values) == 5
    assert lookup(values, "a.b[1].c") is NOT_SET and apply("{{ nope }}", values) is NOT_SET


def test_variable_and_block_references_are_left_for_the_api_then_resolved() -> None:
    template = {"job_configuration": {"image": "{{ prefect.variables.image }}",
                                      "registry_credentials": "{{ prefect.blocks.docker-registry-credentials.ci }}",
                                      "name": "x-{{ prefect.variables.suffix }}"},
                "variables": {"properties": {}}}  # fmt: skip
    config = render(template, {})
    assert references(config) == {
        "prefect.variables.image", "prefect.variables.suffix", "prefect.blocks.docker-registry-credentials.ci"
    }  # fmt: skip
    known = {"prefect.variables.image": "busybox:2", "prefect.variables.suffix": 7,
             "prefect.blocks.docker-registry-credentials.ci": {"username": "u"}}  # fmt: skip
    assert resolve(config, known.__getitem__) == {
        "image": "busybox:2", "registry_credentials": {"username": "u"}, "name": "x-7"
    }  # fmt: skip


@pytest.mark.parametrize("bad", [None, [], "x", 5])
def test_odd_layers_are_no_layers(bad: Any) -> None:
    assert job_variables(bad, bad) == {}


def test_a_block_chosen_in_prefects_ui_is_a_reference_too() -> None:
    """`{"$ref": {"block_document_id": ID}}` in a variable's default is looked up like a placeholder."""
    template = {"job_configuration": {"registry_credentials": "{{ registry_credentials }}"},
                "variables": {"properties": {"registry_credentials": {"default": {"$ref": {"block_document_id": "b1"}}}}}}  # fmt: skip
    config = render(template, {})
    assert references(config) == {"prefect.block-document-id.b1"}
    assert resolve(config, {"prefect.block-document-id.b1": {"username": "u"}}.__getitem__) == {
        "registry_credentials": {"username": "u"}
    }


@pytest.mark.parametrize("pool_env", [{}, {"POOL": "p"}])
def test_env_placeholders_never_read_the_agents_environment(pool_env: dict[str, str], monkeypatch: Any) -> None:
    """Attack first (issue 27): `{"X": "{{ $SECRET }}"}` copied the agent's variable into the container.

    With a non-empty pool default Prefect's worker renders job values too, and fills `$NAME` from its
    own environment; dagent renders them and leaves `$NAME` empty. With an empty default neither renders
    job values (Prefect tests the default for truth): the text is passed as written.
    """
    monkeypatch.setenv("AGENT_SECRET", "s3cret")
    config = render(_template(env=pool_env), {"env": {"X": "{{ $AGENT_SECRET }}", "Y": "a{{ $AGENT_SECRET }}b"}})
    assert "s3cret" not in json.dumps(config)
    if pool_env:
        assert config["env"] == {**pool_env, "X": "", "Y": "ab"}
    else:
        assert config["env"] == {"X": "{{ $AGENT_SECRET }}", "Y": "a{{ $AGENT_SECRET }}b"}
