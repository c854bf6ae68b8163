"""Fuzzing config and run loading: any input is either accepted or refused with dagent's own error, one line per problem."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagent.config import AgentConfig, env_name, leaf_keys, load_config
from dagent.errors import ConfigError, RunFileError
from dagent.runs import RunRequest, load_run_file, parse_run
from dagent.sources.prefect import PrefectSource
from dagent.sources.prefect.client import PrefectClient
from dagent.sources.prefect.jobvars import FlowRunContext, base_job_template
from dagent.sources.prefect.lookups import Lookups
from dagent.spec import Origin
from tests.support.corpus import SECRET
from tests.support.fakes import RoutingTransport

_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["", "/", "..", "/var/run/docker.sock", "a:b:c", "1g", "-1", "all", "host", "[", "{", "\r\n"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_config_keys = [k.split(".")[-1] for k in leaf_keys()] + ["api", "docker", "health", "inbox", "retry"]
_sections = {k.split(".")[0] for k in leaf_keys() if "." in k}
_run_fields = list(RunRequest.model_fields)
_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line_each(error: Exception) -> None:
    text = str(error)
    assert text.strip(), "an empty error"
    assert SECRET not in text
    for line in text.split("\n"):
        assert line.strip() and "Traceback" not in line and "\r" not in line


def _table() -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(_config_keys) | st.text(min_size=1, max_size=10)
    top = st.dictionaries(keys, _values, max_size=5)
    sections = st.dictionaries(
        st.sampled_from(sorted(_sections)), st.dictionaries(keys, _values, max_size=4), max_size=3
    )
    return st.builds(lambda a, b: {**a, **b}, top, sections)


@_fuzz
@given(_table())
def test_any_config_table(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.toml"
        path.write_text(tomli_w.dumps(data))
        try:
            loaded = load_config(config_file=path, environ={})
        except ConfigError as e:
            _one_line_each(e)
            assert str(path) in str(e) or "api.token_file" in str(e)
        else:
            assert isinstance(loaded.config, AgentConfig)


@_fuzz
@given(st.binary(max_size=300))
def test_any_config_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.toml"
        path.write_bytes(raw)
        try:
            load_config(config_file=path, environ={})
        except ConfigError as e:
            _one_line_each(e)


@_fuzz
@given(st.dictionaries(st.sampled_from([env_name(k) for k in leaf_keys()]), st.text(max_size=40), max_size=4))
def test_any_environment(environ: dict[str, str]) -> None:
    environ = {k: v.replace("\x00", "") for k, v in environ.items()}
    try:
        load_config(environ=environ)
    except ConfigError as e:
        _one_line_each(e)
        assert any(name in str(e) for name in environ) or "token_file" in str(e) or "inbox" in str(e)


@_fuzz
@given(st.dictionaries(st.sampled_from(_run_fields) | st.text(min_size=1, max_size=10), _values, max_size=6))
def test_any_run_table(data: dict[str, Any]) -> None:
    try:
        # Secrets go where secrets live (the env): they must never be echoed back in an error.
        run = parse_run({"id": "fuzz", "image": "busybox", **data, "env": data.get("env", {"K": SECRET})}, "run.toml")
    except RunFileError as e:
        _one_line_each(e)
        assert all(line.startswith("run.toml: ") for line in str(e).splitlines())
    else:
        assert isinstance(run, RunRequest)


@_fuzz
@given(st.binary(max_size=300))
def test_any_run_file_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        path.write_bytes(raw)
        try:
            load_run_file(path)
        except RunFileError as e:
            _one_line_each(e)
            assert str(path) in str(e)


_source: list[PrefectSource] = []


def _prefect() -> PrefectSource:
    if not _source:
        config = load_config(
            cli={"source": "prefect", "api": {"url": "http://127.0.0.1:9/api", "send_agent_logs": False}}, environ={}
        ).config
        _source.append(PrefectSource(config))
    return _source[0]


@_fuzz
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "image",
                "command",
                "env",
                "volumes",
                "mem_limit",
                "cpus",
                "network_mode",
                "networks",
                "labels",
                "required_labels",
                "privileged",
                "ports",
                "container_create_kwargs",
            ]
        )
        | st.text(max_size=10),
        _values,
        max_size=6,
    )
)
def test_any_job_variables(variables: dict[str, Any]) -> None:
    try:
        _prefect().prepare.run_request("fuzz", variables)
    except RunFileError as e:
        _one_line_each(e)


# --- the whole path: values → RunRequest → policy → ContainerSpec → docker-py's own request ------

_edge = st.one_of(
    _scalars,
    st.floats(),  # nan and ±inf included
    st.sampled_from([10**400, -(10**400), 1e-10, 1e300, "9" * 400, "1e400", "0.1b", "a\x00b", "/tmp/\x00", "x\n"]),
    st.integers(-(2**64), 2**64),
)
_edge_values = st.recursive(
    _edge,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# An agent that allows nearly everything, so that most runs get through to docker-py's builder.
_PERMISSIVE = {
    "allowed_host_paths": ["/tmp"], "allow_named_volumes": True, "allow_privileged": True,
    "allow_host_network": True, "allowed_capabilities": ["NET_ADMIN", "SYS_PTRACE"],
    "allowed_devices": ["/dev/null", "/dev/zero:/dev/zero:r"], "allow_gpus": True, "allow_ports": True,
    "max_cpus": 8, "max_memory": "4g",
}  # fmt: skip


def _through_docker_py(make_run: Any) -> None:
    from dagent.contracts import DaemonFacts
    from dagent.errors import PolicyError
    from dagent.hostview import HostView
    from dagent.spec import build
    from tests.support.helpers import docker_request

    config = load_config({"name": "fuzz", "docker": _PERMISSIVE}, environ={}).config
    try:
        run = make_run()
        spec = build(config, run, facts=HostView(config, DaemonFacts("/var/lib/docker", None, None)).facts(run))
    except (RunFileError, PolicyError) as e:
        _one_line_each(e)
        return
    body = docker_request(spec.to_docker_kwargs())
    host = body["HostConfig"]
    assert host["NanoCpus"] >= 10_000_000  # max_cpus is every run's limit; 0 would be dropped: no limit
    assert 6 * 2**20 <= host["Memory"] <= 4 * 2**30  # max_memory is every run's limit
    assert host.get("ShmSize", 0) <= host["Memory"]


@_fuzz
@given(st.dictionaries(st.sampled_from(_run_fields), _edge_values, max_size=6))
def test_any_run_table_through_docker_py(data: dict[str, Any]) -> None:
    """Any run table becomes docker-py's request or one clear line per problem; never an exception."""
    _through_docker_py(lambda: parse_run({"id": "fuzz", "image": "busybox", **data}, "run.toml"))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["cpus", "memory", "shm_size", "timeout", "gpus"]), _edge)
def test_any_number_through_docker_py(key: str, value: Any) -> None:
    """A number at any limit (tiny, huge, inf, nan, 400 digits) is a limit Docker keeps, or one line."""
    _through_docker_py(lambda: parse_run({"id": "fuzz", "image": "busybox", key: value}, "run.toml"))


@_fuzz
@given(
    st.dictionaries(
        st.sampled_from(["image", "command", "env", "volumes", "mem_limit", "cpus", "network_mode", "networks",
                         "labels", "privileged", "ports", "devices", "shm_size", "timeout", "gpus"]),
        _edge_values, max_size=6,
    )
)  # fmt: skip
def test_any_job_variables_through_docker_py(variables: dict[str, Any]) -> None:
    """Any job variables become docker-py's request or one clear line; never an exception."""
    _through_docker_py(lambda: _prefect().prepare.run_request("fuzz", {"image": "busybox", **variables}))


# --- the whole preparation path, as the sources take a run (issue 27) -----------------------------
# A run file's bytes, or a flow run's job variables rendered on a pool's template (references looked
# up, then mapped, then the container's origin, then judged and built): a spec, or an InputError of
# one line per problem. Any other exception is a bug that the sources' per-run guard would turn into
# a CRASHED run with an exception's name. DAGENT_FUZZ_EXAMPLES sets how many examples (CI: 200).

_WHOLE = settings(
    max_examples=int(os.environ.get("DAGENT_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_references = st.sampled_from(
    ["{{ prefect.variables.known }}", "{{ prefect.variables.gone }}", "{{ prefect.blocks.secret.known }}",
     "{{ prefect.blocks.secret.known.value }}", "{{ prefect.blocks.secret.known.missing }}", "{{ $HOME }}",
     "a{{ image }}b", "{{ prefect.variables.a..b }}", "{{ env }}"]
) | st.builds(lambda i: {"$ref": {"block_document_id": i}}, st.text(max_size=12) | st.just("../../admin"))  # fmt: skip
_job_values = st.recursive(
    st.one_of(_edge, _references),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_CREATE_KEYS = ["shm_size", "init", "user", "working_dir", "hostname", "extra_hosts", "dns", "ulimits",
                "stop_signal", "cap_add", "devices", "pid_mode", "ipc_mode", "healthcheck", "tmpfs", "entrypoint"]  # fmt: skip
_credentials = (
    st.fixed_dictionaries(
        {"username": st.text(max_size=5), "password": st.text(max_size=5)}, optional={"registry_url": _job_values}
    )
    | _job_values
)
_job_variable_tables = st.builds(
    lambda plain, shaped: {**plain, **shaped},
    st.dictionaries(
        st.sampled_from(sorted(base_job_template()["variables"]["properties"])) | st.text(max_size=10),
        _job_values,
        max_size=5,
    ),
    # The variables whose values are tables of their own, shaped as such most of the time.
    st.fixed_dictionaries(
        {},
        optional={
            "registry_credentials": _credentials,
            "container_create_kwargs": st.dictionaries(st.sampled_from(_CREATE_KEYS), _job_values, max_size=3),
            "labels": st.dictionaries(st.text(max_size=8), _job_values, max_size=3),
        },
    ),
)


def _answers(method: str, path: str, body: Any) -> tuple[int, Any]:
    """A Prefect that knows one variable and one block (and no block document by id)."""
    known = {"/variables/name/known": {"value": "v"},
             "/block_types/slug/secret/block_documents/name/known": {"data": {"value": "s"}}}  # fmt: skip
    found = known.get(path.split("?")[0])
    return (200, found) if found else (404, {"detail": "Not Found"})


def _lookups() -> Lookups:
    config = load_config({"source": "prefect", "api": {"url": "http://prefect.test/api"}}, environ={}).config
    return Lookups(PrefectClient(config, RoutingTransport(_answers)))


def _whole_path(make: Any) -> None:
    from dagent.contracts import DaemonFacts
    from dagent.errors import InputError, PolicyError
    from dagent.hostview import HostView
    from dagent.spec import build

    config = load_config({"name": "fuzz", "docker": _PERMISSIVE}, environ={}).config
    try:
        run, origin = make()
        view = HostView(config, DaemonFacts("/var/lib/docker", None, None), volume=lambda _n: None)
        spec = build(config, run, origin, view.facts(run))
    except (RunFileError, PolicyError, InputError) as e:
        _one_line_each(e)
        return
    assert spec.run_id == run.id


@_WHOLE
@given(_job_variable_tables, _job_variable_tables)
def test_any_job_variables_through_the_whole_preparation(deployment: dict[str, Any], run: dict[str, Any]) -> None:
    """Deployment and flow-run job variables → template → lookups → run → origin → spec, or one line each."""
    source = _prefect()
    source._lookups = source.prepare.lookups = _lookups()  # the real lookups, answered in memory

    def make() -> tuple[Any, Any]:
        flow_run = {"id": "fuzz", "job_variables": run, "name": "fuzzy"}
        # A deployment that names an image, so that most runs get as far as their origin and spec.
        variables = source.prepare.job_variables(
            flow_run, {"id": "d", "name": "dep", "job_variables": {"image": "busybox", **deployment}}
        )
        request = source.prepare.run_request("fuzz", variables)
        return request, source.prepare.origin("fuzz", FlowRunContext(flow_run, None, "flow"), variables)

    _whole_path(make)


@_WHOLE
@given(
    st.dictionaries(st.sampled_from(_run_fields), _edge_values, max_size=6).map(lambda d: {"image": "busybox", **d})
    | st.binary(max_size=400)
)
def test_any_run_file_through_the_whole_preparation(content: dict[str, Any] | bytes) -> None:
    """A run file's bytes (or a table written as TOML) → read → parse → spec, or one line each."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        try:
            path.write_bytes(content if isinstance(content, bytes) else tomli_w.dumps(content).encode())
        except (ValueError, TypeError):
            return  # not writable as TOML (a value TOML has no form for): no file to read
        _whole_path(lambda: (load_run_file(path), Origin("inbox")))
