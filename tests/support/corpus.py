"""Corpora of bad inputs and policy-bypass attempts, with the checks that judge dagent's answer to each.

Pure enough for the unit suite (no daemon, no server: API answers come from a stub HTTP server in
this process) and counted by the chaos runner. Each check returns None when dagent behaved, or a
one-line description of what went wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

from pydantic import SecretStr

from dagent import cli
from dagent.config import load_config
from dagent.contracts import DaemonFacts
from dagent.errors import DagentError, PolicyError, RunFileError, SourceError
from dagent.hostview import HostView
from dagent.images import parse_image
from dagent.policy import VolumeFacts
from dagent.runs import parse_run
from dagent.sources.prefect import PrefectSource
from dagent.sources.prefect.jobvars import FlowRunContext
from dagent.spec import LABEL_AGENT, LABEL_RUN_ID, Origin, build
from tests.support.helpers import StubAPI, docker_request

SECRET = "chaos-s3cret-9f1c2e7a"  # a token no output may ever show


@dataclass(frozen=True)
class Case:
    """One bad input: `kind` says which door it comes through; `must_name` what the error must name."""

    kind: str
    name: str
    data: Any
    must_name: str = ""


def _configs() -> list[Case]:
    # (name, TOML text, what the error must name)
    items = [
        ("toml syntax", "name = ", "agent.toml"),
        ("unclosed table", "[docker\n", "agent.toml"),
        ("unknown top key", "nmae = 'x'\n", "nmae"),
        ("unknown section", "[dockr]\nbase_url = 'x'\n", "dockr"),
        ("unknown docker key", "[docker]\nallow_privilged = true\n", "docker.allow_privilged"),
        ("unknown api key", "[api]\nurll = 'http://x'\n", "api.urll"),
        ("concurrency text", "concurrency = 'many'\n", "concurrency"),
        ("concurrency zero", "concurrency = 0\n", "concurrency"),
        ("concurrency negative", "concurrency = -3\n", "concurrency"),
        ("concurrency float", "concurrency = 2.5\n", "concurrency"),
        ("source unknown", "source = 'kafka'\n", "source"),
        ("log level", "log_level = 'LOUD'\n", "log_level"),
        ("log format", "log_format = 'xml'\n", "log_format"),
        ("labels of numbers", "labels = [1, 2]\n", "labels"),
        ("poll interval negative", "poll_interval = -1\n", "poll_interval"),
        ("max polls zero", "max_polls = 0\n", "max_polls"),
        ("name empty", "name = ''\n", "name"),
        ("name bad chars", "name = 'a b/c'\n", "name"),
        ("api url not url", "source = 'prefect'\n[api]\nurl = 'not a url'\n", "api.url"),
        ("api url ftp", "[api]\nurl = 'ftp://x/api'\n", "api.url"),
        ("heartbeat zero", "[api]\nheartbeat_interval = 0\n", "api.heartbeat_interval"),
        ("api timeout text", "[api]\ntimeout = 'slow'\n", "api.timeout"),
        ("token file missing", "[api]\ntoken_file = '/nonexistent/dagent-token'\n", "api.token_file"),
        ("pull policy", "[docker]\npull = 'sometimes'\n", "docker.pull"),
        ("keep containers", "[docker]\nkeep_containers = 'forever'\n", "docker.keep_containers"),
        ("volume relative target", "[docker]\nvolumes = ['/a:b']\n", "docker.volumes"),
        ("volume bad mode", "[docker]\nvolumes = ['/a:/b:rx']\n", "docker.volumes"),
        ("env not table", "[docker]\nenv = ['A=1']\n", "docker.env"),
        ("env bad name", "[docker]\nenv = { '1A' = 'x' }\n", "docker.env"),
        ("env name with =", "[docker]\nenv = { 'A=B' = 'x' }\n", "docker.env"),
        ("max memory unit", "[docker]\nmax_memory = '4 parsecs'\n", "docker.max_memory"),
        ("max cpus negative", "[docker]\nmax_cpus = -1\n", "docker.max_cpus"),
        ("stop grace negative", "[docker]\nstop_grace = -5\n", "docker.stop_grace"),
        ("allowed host path relative", "[docker]\nallowed_host_paths = ['data']\n", ""),
        ("base url scheme", "[docker]\nbase_url = 'gopher://x'\n", "docker.base_url"),
        ("health address", "[health]\naddress = 'nowhere'\n", "health.address"),
        ("health port", "[health]\naddress = '127.0.0.1:99999'\n", "health.address"),
        ("retry attempts zero", "[retry]\nattempts = 0\n", "retry.attempts"),
        ("retry backoff text", "[retry]\nbackoff_initial = 'soon'\n", "retry.backoff_initial"),
        ("not utf-8", b"name = '\xff\xfe'\n", "agent.toml"),
        ("key with a carriage return", '"a\\rb" = 1\n', "agent.toml"),
        ("number as a key", '"0" = []\n', "agent.toml"),
        ("memory as a list", "[docker]\nmax_memory = []\n", "docker.max_memory"),
    ]
    return [Case("config", n, t, k) for n, t, k in items]


def _envs() -> list[Case]:
    items = [
        ("concurrency", {"DAGENT_CONCURRENCY": "lots"}, "DAGENT_CONCURRENCY"),
        ("concurrency zero", {"DAGENT_CONCURRENCY": "0"}, "DAGENT_CONCURRENCY"),
        ("source", {"DAGENT_SOURCE": "s3"}, "DAGENT_SOURCE"),
        ("unknown variable", {"DAGENT_CONCURENCY": "2"}, "DAGENT_CONCURENCY"),
        ("unknown nested", {"DAGENT_DOCKER__ALLOW_PRIVILGED": "1"}, "DAGENT_DOCKER__ALLOW_PRIVILGED"),
        ("bool", {"DAGENT_DOCKER__ALLOW_PRIVILEGED": "perhaps"}, "DAGENT_DOCKER__ALLOW_PRIVILEGED"),
        ("labels json", {"DAGENT_LABELS": "[1, "}, "DAGENT_LABELS"),
        ("env json", {"DAGENT_DOCKER__ENV": "{not json"}, "DAGENT_DOCKER__ENV"),
        ("env list", {"DAGENT_DOCKER__ENV": "[1, 2]"}, "DAGENT_DOCKER__ENV"),
        ("volumes", {"DAGENT_DOCKER__VOLUMES": "/a:relative"}, "DAGENT_DOCKER__VOLUMES"),
        ("memory", {"DAGENT_DOCKER__MAX_MEMORY": "12 bananas"}, "DAGENT_DOCKER__MAX_MEMORY"),
        ("api url", {"DAGENT_API__URL": "::::"}, "DAGENT_API__URL"),
        ("prefect api url", {"PREFECT_API_URL": "nope"}, "PREFECT_API_URL"),
        ("docker host", {"DOCKER_HOST": "gopher://x"}, "DOCKER_HOST"),
        ("poll interval", {"DAGENT_POLL_INTERVAL": "-2"}, "DAGENT_POLL_INTERVAL"),
        ("keep", {"DAGENT_DOCKER__KEEP_CONTAINERS": "yes"}, "DAGENT_DOCKER__KEEP_CONTAINERS"),
        ("pull", {"DAGENT_DOCKER__PULL": "maybe"}, "DAGENT_DOCKER__PULL"),
        ("log level", {"DAGENT_LOG_LEVEL": "chatty"}, "DAGENT_LOG_LEVEL"),
        ("retry attempts", {"DAGENT_RETRY__ATTEMPTS": "-1"}, "DAGENT_RETRY__ATTEMPTS"),
        ("health address", {"DAGENT_HEALTH__ADDRESS": "port 80"}, "DAGENT_HEALTH__ADDRESS"),
        ("token file", {"DAGENT_API__TOKEN_FILE": "/nonexistent/token"}, "DAGENT_API__TOKEN_FILE"),
        ("config file missing", {"DAGENT_CONFIG": "/nonexistent/agent.toml"}, "agent.toml"),
        ("work queues", {"DAGENT_API__WORK_QUEUES": '{"a": 1}'}, "DAGENT_API__WORK_QUEUES"),
        ("max cpus", {"DAGENT_DOCKER__MAX_CPUS": "all of them"}, "DAGENT_DOCKER__MAX_CPUS"),
        ("secret with bad neighbour", {"DAGENT_API__TOKEN": SECRET, "DAGENT_CONCURRENCY": "x"}, "DAGENT_CONCURRENCY"),
        ("registry auth not json", {"DAGENT_DOCKER__REGISTRY_AUTH": "00:"}, "DAGENT_DOCKER__REGISTRY_AUTH"),
        ("secret in a bad env table", {"DAGENT_DOCKER__ENV": '{"A B": "' + SECRET + '"}'}, "DAGENT_DOCKER__ENV"),
    ]
    return [Case("env", n, e, k) for n, e, k in items]


def _flags() -> list[Case]:
    items = [
        ("concurrency", ["--concurrency", "ten"], "concurrency"),
        ("label empty", ["--label", ""], "labels"),
        ("base url", ["--base-url", "gopher://x"], "base_url"),
        ("api url", ["--api-url", "x y"], "api.url"),
        ("log level", ["--log-level", "LOUD"], "log_level"),
        ("agent address", ["--agent-address", "nowhere"], "health.address"),
        ("volume", ["--volume", "/a:b:c:d"], "volumes"),
        ("token file", ["--token-file", "/nonexistent/token"], "token_file"),
        ("config missing", ["-c", "/nonexistent/agent.toml"], "agent.toml"),
        ("secret next to a bad flag", ["--token", SECRET, "--concurrency", "-1"], "concurrency"),
    ]
    return [Case("flags", n, f, k) for n, f, k in items]


def _run_files() -> list[Case]:
    items: list[tuple[str, Any, str]] = [
        ("toml syntax", "image = ", "run.toml"),
        ("not utf-8", b"image = '\xff'\n", "run.toml"),
        ("no image", "command = ['true']\n", "image"),
        ("image empty", "image = ''\n", "image"),
        ("image uppercase repo", "image = 'Local/BusyBox'\n", "image"),
        ("image spaces", "image = 'busy box'\n", "image"),
        ("image bad tag", "image = 'busybox:'\n", "image"),
        ("image bad digest", "image = 'busybox@sha256:xyz'\n", "image"),
        ("image huge port", "image = 'reg:99999/x'\n", "image"),
        ("id with slash", "id = '../etc'\nimage = 'busybox'\n", "id"),
        ("id with space", "id = 'a b'\nimage = 'busybox'\n", "id"),
        ("id too long", f"id = '{'x' * 101}'\nimage = 'busybox'\n", "id"),
        ("unknown field", "image = 'busybox'\nprivilged = true\n", "privilged"),
        ("command number", "image = 'busybox'\ncommand = 3\n", "command"),
        ("command unbalanced quote", "image = 'busybox'\ncommand = \"sh -c 'oops\"\n", "command"),
        ("env not table", "image = 'busybox'\nenv = 'A=1'\n", "env"),
        ("env bad name", "image = 'busybox'\nenv = { 'A B' = '1' }\n", "env"),
        ("env value table", "image = 'busybox'\nenv = { A = { b = 1 } }\n", "env"),
        ("volume no target", "image = 'busybox'\nvolumes = ['/data']\n", "volumes"),
        ("volume relative target", "image = 'busybox'\nvolumes = ['/data:data']\n", "volumes"),
        ("volume bad mode", "image = 'busybox'\nvolumes = ['/data:/data:rwx']\n", "volumes"),
        ("cpus zero", "image = 'busybox'\ncpus = 0\n", "cpus"),
        ("cpus text", "image = 'busybox'\ncpus = 'two'\n", "cpus"),
        ("memory unit", "image = 'busybox'\nmemory = '12 parsecs'\n", "memory"),
        ("memory negative", "image = 'busybox'\nmemory = -1\n", "memory"),
        ("gpus zero", "image = 'busybox'\ngpus = 0\n", "gpus"),
        ("gpus word", "image = 'busybox'\ngpus = 'some'\n", "gpus"),
        ("device relative", "image = 'busybox'\ndevices = ['dev/sda']\n", "devices"),
        ("device perms", "image = 'busybox'\ndevices = ['/dev/null:/dev/null:rwx']\n", "devices"),
        ("port text", "image = 'busybox'\nports = ['http']\n", "ports"),
        ("port too big", "image = 'busybox'\nports = ['70000:80']\n", "ports"),
        ("port zero", "image = 'busybox'\nports = ['0']\n", "ports"),
        ("timeout negative", "image = 'busybox'\ntimeout = -1\n", "timeout"),
        ("working dir relative", "image = 'busybox'\nworking_dir = 'tmp'\n", "working_dir"),
        ("user empty", "image = 'busybox'\nuser = ''\n", "user"),
        ("pid container", "image = 'busybox'\npid = 'container:x'\n", "pid"),
        ("ipc unknown", "image = 'busybox'\nipc = 'everything'\n", "ipc"),
        ("privileged text", "image = 'busybox'\nprivileged = 'yes please'\n", "privileged"),
        ("labels not list", "image = 'busybox'\nlabels = 'gpu'\n", "labels"),
    ]
    return [Case("run-file", n, t, k) for n, t, k in items]


def _job_variables() -> list[Case]:
    items: list[tuple[str, dict[str, Any], str]] = [
        ("no image and no default", {}, "image"),
        ("image bad", {"image": "Not An Image"}, "image"),
        (
            "create kwargs dagent cannot judge",
            {"image": "busybox", "container_create_kwargs": {"security_opt": ["seccomp=unconfined"]}},
            "container_create_kwargs.security_opt",
        ),
        (
            "create kwargs not a table",
            {"image": "busybox", "container_create_kwargs": ["x"]},
            "container_create_kwargs",
        ),
        ("env not mapping", {"image": "busybox", "env": "A=1"}, "env"),
        ("env bad name", {"image": "busybox", "env": {"A-B C": "1"}}, "env"),
        ("volumes not list", {"image": "busybox", "volumes": "/a:/b"}, "volumes"),
        ("volume relative", {"image": "busybox", "volumes": ["/a:b"]}, "volumes"),
        ("mem limit text", {"image": "busybox", "mem_limit": "lots"}, "memory"),
        ("cpus text", {"image": "busybox", "cpus": "many"}, "cpus"),
        ("command unbalanced", {"image": "busybox", "command": "sh -c 'x"}, "command"),
        ("command number", {"image": "busybox", "command": 7}, "command"),
        ("privileged text", {"image": "busybox", "privileged": "sure"}, "privileged"),
        ("ports bad", {"image": "busybox", "ports": ["x:y"]}, "ports"),
        ("timeout negative", {"image": "busybox", "timeout": -5}, "timeout"),
        ("required labels bad", {"image": "busybox", "required_labels": [["nested"]]}, "labels"),
    ]
    return [Case("job-variables", n, v, k) for n, v, k in items]


# Answers a broken or hostile API might give; each (method, path prefix) → (status, body).
_API = {
    "version": ("GET", "/api/admin/version"),
    "pool": ("GET", "/api/work_pools/"),
    "scheduled": ("POST", "/api/work_pools/chaos/get_scheduled_flow_runs"),
    "filter": ("POST", "/api/flow_runs/filter"),
}


def _api_answers() -> list[Case]:
    def case(name: str, answers: dict[str, tuple[int, Any]], call: str) -> Case:
        return Case("api-answer", name, {"answers": answers, "call": call})

    good_pool = (200, {"id": "p1", "name": "chaos", "type": "docker", "base_job_template": {}})
    return [
        case("version 500", {"version": (500, {"detail": "boom"})}, "connect"),
        case("version not json", {"version": (200, "<html>")}, "connect"),
        case("unauthorised", {"version": (401, {"detail": "no"})}, "connect"),
        case("pool is a list", {"version": (200, "3.8.8"), "pool": (200, [1, 2])}, "connect"),
        case("pool wrong type", {"version": (200, "3.8.8"), "pool": (200, {"type": "process"})}, "connect"),
        case("pool template garbage", {"version": (200, "3.8.8"), "pool": (200, {"type": "docker", "base_job_template": 5})}, "connect"),
        case("scheduled not a list", {"version": (200, "3.8.8"), "pool": good_pool, "scheduled": (200, {"a": 1})}, "poll"),
        case("scheduled items garbage", {"version": (200, "3.8.8"), "pool": good_pool, "scheduled": (200, [1, "x", None, {"flow_run": 3}])}, "poll"),
        case("scheduled run without id", {"version": (200, "3.8.8"), "pool": good_pool, "scheduled": (200, [{"flow_run": {"name": "x"}}])}, "poll"),
        case("scheduled 422", {"version": (200, "3.8.8"), "pool": good_pool, "scheduled": (422, {"detail": [{"msg": "bad"}]})}, "poll"),
        case("scheduled truncated json", {"version": (200, "3.8.8"), "pool": good_pool, "scheduled": (200, '[{"flow_run": ')}, "poll"),
        case("filter not a list", {"version": (200, "3.8.8"), "pool": good_pool, "filter": (200, "nope")}, "recover"),
        case("filter items garbage", {"version": (200, "3.8.8"), "pool": good_pool, "filter": (200, [1, {"id": 5}, {"id": "r", "state": "x"}])}, "recover"),
        case("cancellations garbage", {"version": (200, "3.8.8"), "pool": good_pool, "filter": (200, [None, {"no": "id"}])}, "cancellations"),
        case("heartbeat 404", {"version": (200, "3.8.8"), "pool": good_pool}, "heartbeat"),
    ]  # fmt: skip


BAD_INPUTS: list[Case] = [*_configs(), *_envs(), *_flags(), *_run_files(), *_job_variables(), *_api_answers()]


# --- judging bad inputs --------------------------------------------------------------------------


@contextlib.contextmanager
def _sandbox(environ: Mapping[str, str] | None = None) -> Iterator[Path]:
    """An empty working directory and an environment without DAGENT_/PREFECT_/DOCKER_HOST."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DAGENT_", "PREFECT_")) and k != "DOCKER_HOST"}
    with (
        tempfile.TemporaryDirectory(prefix="dagent-corpus-") as tmp,
        mock.patch.dict(os.environ, {**clean, **(environ or {})}, clear=True),
    ):
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(cwd)


def run_cli(
    argv: list[str], environ: Mapping[str, str] | None = None, files: Mapping[str, Any] | None = None
) -> tuple[int, str, str]:
    """`dagent argv` in this process, in an empty directory: (exit code, stdout, stderr)."""
    with _sandbox(environ) as tmp:
        for name, content in (files or {}).items():
            path = tmp / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse's own errors
                code = int(e.code or 0)
            except BaseException as e:  # a traceback is the failure looked for
                return -1, out.getvalue(), f"Traceback: {type(e).__name__}: {e}"
        return code, out.getvalue(), err.getvalue()


def _judge_cli(code: int, err: str, must_name: str) -> str | None:
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err:
        return f"traceback: {err.strip().splitlines()[-1]}"
    if code != 2:
        return f"exit {code}, not 2 ({lines[0] if lines else 'no message'})"
    # One line per problem: an input with two problems gets two lines, each complete.
    errors = [line for line in lines if line.startswith("dagent: error:")]
    if not errors or len(errors) != len(lines):
        return f"not one line per problem: {lines}"
    if must_name and must_name not in errors[0]:
        return f"the error does not name {must_name!r}: {errors[0]}"
    if SECRET in err:
        return "the error shows the secret"
    return None


def _agent_config(**extra: Any) -> Any:
    cli_values = {
        "name": "chaos",
        "source": "prefect",
        "api": {"url": "http://127.0.0.1:9/api", "work_pool": "chaos"},
        **extra,
    }
    with _sandbox():
        return load_config(cli=cli_values, environ={}).config


def _judge_api(case: Case) -> str | None:
    stub = StubAPI({_API[k]: v for k, v in case.data["answers"].items()})
    try:
        config = _agent_config(api={"url": stub.url, "work_pool": "chaos", "event_stream": False, "send_agent_logs": False,
                                    "token": SECRET}, retry={"attempts": 1})  # fmt: skip
        source = PrefectSource(config)
        call = case.data["call"]
        try:
            source.connect()
            if call == "poll":
                source.poll(4)
            elif call == "recover":
                source.recover({}, [])
            elif call == "cancellations":
                source._cancels._last_check = -1e9
                source.cancellations(["r1"])
            elif call == "heartbeat":
                source.heartbeat()
        except SourceError as e:
            text = str(e)
            if "\n" in text or not text:
                return f"a SourceError of {len(text.splitlines())} lines"
            if SECRET in text:
                return "the error shows the secret"
        except Exception as e:  # anything but SourceError reaches the loop as a crash
            return f"{type(e).__name__}: {e}"
        finally:
            source.close()
        return None
    finally:
        stub.close()


def judge(case: Case) -> str | None:
    """None when dagent answered this bad input as it should; else what went wrong."""
    if case.kind == "config":
        code, _, err = run_cli(["config", "validate", "-c", "agent.toml"], files={"agent.toml": case.data})
        return _judge_cli(code, err, case.must_name)
    if case.kind == "env":
        code, _, err = run_cli(["config", "validate"], environ=case.data)
        return _judge_cli(code, err, case.must_name)
    if case.kind == "flags":
        code, _, err = run_cli(["config", "validate", *case.data])
        return _judge_cli(code, err, case.must_name)
    if case.kind == "run-file":
        code, _, err = run_cli(["plan", "run.toml"], files={"run.toml": case.data})
        return _judge_cli(code, err, case.must_name)
    if case.kind == "job-variables":
        source = PrefectSource(_agent_config())
        try:
            source.prepare.run_request("run-1", case.data)
        except RunFileError as e:
            if len(str(e).splitlines()) != 1:
                return f"{len(str(e).splitlines())} lines: {e}"
            if case.must_name not in str(e):
                return f"the error does not name {case.must_name!r}: {e}"
            return None
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        finally:
            source.close()
        return "accepted"
    if case.kind == "api-answer":
        return _judge_api(case)
    raise ValueError(case.kind)


# --- policy bypass -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """A run (a run file's fields, or Prefect job variables) that must not get what it asks for."""

    name: str
    fields: dict[str, Any]
    via: str = "run-file"  # or "job-variables"
    config: dict[str, Any] = field(default_factory=dict)  # [docker] settings of the agent
    daemon: str = "local"  # "local", "remote" (another host's paths) or "private" (another mount namespace)


def _attempts(root: Path) -> list[Attempt]:
    """Bypass attempts; `root` is an allowed host path holding symlinks to forbidden places."""
    allowed = {"allowed_host_paths": [str(root)]}
    tls = {"client_cert": f"{root}/tls/cert.pem", "client_key": f"{root}/tls/key.pem"}
    img = "busybox"
    items = [
        Attempt("privileged", {"privileged": True}),
        Attempt("privileged as string", {"privileged": "true"}),
        Attempt("cap SYS_ADMIN", {"cap_add": ["SYS_ADMIN"]}),
        Attempt("cap lower case", {"cap_add": ["sys_admin"]}),
        Attempt("cap CAP_ prefix", {"cap_add": ["CAP_SYS_ADMIN"]}),
        Attempt("cap ALL", {"cap_add": ["ALL"]}),
        Attempt("cap not granted", {"cap_add": ["NET_ADMIN"]}, config={"allowed_capabilities": ["NET_RAW"]}),
        Attempt("device", {"devices": ["/dev/sda"]}),
        Attempt("device renamed", {"devices": ["/dev/sda:/dev/null"]}),
        Attempt("device via ..", {"devices": ["/dev/../dev/sda"]}, config={"allowed_devices": ["/dev/null"]}),
        # An allowed device named through a link grants the device it resolves to (as /dev/disk/by-id
        # names do); a link to another device is that other device.
        Attempt("device symlink", {"devices": [str(root / "disk")]}, config={"allowed_devices": ["/dev/null"]}),
        Attempt("host network", {"network": "host"}),
        Attempt("container network", {"network": "container:other"}),
        Attempt("host pid", {"pid": "host"}),
        Attempt("host ipc", {"ipc": "host"}),
        Attempt("gpus", {"gpus": "all"}),
        Attempt("ports", {"ports": ["8080:80"]}),
        Attempt("ports on all addresses", {"ports": ["0.0.0.0:2375:2375"]}),
        Attempt("bind not allowed", {"volumes": ["/srv:/srv"]}),
        Attempt("bind root", {"volumes": ["/:/host"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("docker socket", {"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("docker socket via /run", {"volumes": ["/run/docker.sock:/d.sock"]}, config={"allowed_host_paths": ["/run"]}),
        Attempt("proc", {"volumes": ["/proc:/p"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("proc self root", {"volumes": ["/proc/self/root:/r"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("sys", {"volumes": ["/sys:/s"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("etc", {"volumes": ["/etc:/e"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("var lib docker", {"volumes": ["/var/lib/docker:/d"]}, config={"allowed_host_paths": ["/var"]}),
        Attempt("dotdot escape", {"volumes": [f"{root}/../../etc:/e"]}, config=allowed),
        Attempt("dotdot to socket", {"volumes": [f"{root}/../../var/run/docker.sock:/s"]}, config=allowed),
        Attempt("double slash", {"volumes": ["//etc//:/e"]}, config=allowed),
        Attempt("symlink to socket", {"volumes": [f"{root}/sock:/s"]}, config=allowed),
        Attempt("symlink to etc", {"volumes": [f"{root}/etc:/e"]}, config=allowed),
        Attempt("symlink to /", {"volumes": [f"{root}/rootfs:/r"]}, config=allowed),
        Attempt("symlink dir chain", {"volumes": [f"{root}/chain/passwd:/p"]}, config=allowed),
        Attempt("prefix trick", {"volumes": [f"{root}-evil:/x"]}, config=allowed),
        Attempt("named volume", {"volumes": ["data:/data"]}),
        Attempt("registry not allowed", {"image": "evil.example.com/x:1"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        Attempt("registry case trick", {"image": "EVIL.example.com/x:1"}, config={"registry_allow_list": ["evil.example.com.local"]}),
        Attempt("registry port trick", {"image": "127.0.0.1:5001/x"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        Attempt("over max cpus", {"cpus": 64}, config={"max_cpus": 2}),
        Attempt("over max memory", {"memory": "64g"}, config={"max_memory": "1g"}),
        # Policy v2, class 1: paths that cannot be resolved in full.
        Attempt("link loop", {"volumes": [f"{root}/loop/x:/x"]}, config=allowed),
        Attempt("dangling link into etc", {"volumes": [f"{root}/dangling:/x"]}, config=allowed),
        Attempt("link to proc self root", {"volumes": [f"{root}/procself:/x"]}, config=allowed),
        Attempt("45 chained links", {"volumes": [f"{root}/chain45:/x"]}, config=allowed),
        Attempt("dotdot after missing", {"volumes": [f"{root}/missing/../../../etc:/x"]}, config=allowed),
        Attempt("file as directory", {"volumes": [f"{root}/file/../../../etc:/x"]}, config=allowed),
        Attempt("device via link", {"devices": [f"{root}/null"]}, config={"allowed_devices": ["/dev/null"], **allowed}),
        Attempt("device link beside the allowed", {"devices": [f"{root}/null"]}, config={"allowed_devices": ["/dev/zero"]}),
        # Class 2: the agent cannot vouch for the daemon's view of the host.
        Attempt("remote daemon bind", {"volumes": [f"{root}/ok:/x"]}, config=allowed, daemon="remote"),
        Attempt("private namespace bind", {"volumes": [f"{root}/ok:/x"]}, config=allowed, daemon="private"),
        Attempt("remote daemon device", {"devices": ["/dev/null"]}, config={"allowed_devices": ["/dev/null"]}, daemon="remote"),
        Attempt("private namespace tmp", {"volumes": ["/tmp:/t"]}, config={"allowed_host_paths": ["/tmp"]}, daemon="private"),
        # Class 3: an exception for a sensitive path grants that root only.
        *(
            Attempt(f"exception leak {source}", {"volumes": [f"{source}:/m"]}, config={"allowed_host_paths": roots})
            for roots, sources in (
                (["/", "/etc/ssl/certs"], ("/etc/shadow", "/etc", "/etc/ssl", "/", "/etc/ssl/private")),
                (["/var", "/var/lib/docker/volumes/x/_data"],
                 ("/var/lib/docker", "/var/lib/docker/volumes", "/var/lib", "/var/lib/docker/volumes/y/_data", "/var")),
            )
            for source in sources
        ),
        # Class 4: the daemon's real sockets and state, the agent's own files.
        Attempt("daemon's own socket", {"volumes": [f"{root}/user/docker.sock:/s"]}, config=allowed),
        Attempt("daemon's data root", {"volumes": [f"{root}/docker-data:/d"]}, config=allowed),
        Attempt("inside the data root", {"volumes": [f"{root}/docker-data/volumes:/d"]}, config=allowed),
        Attempt("parent of the data root", {"volumes": [f"{root}:/d"]}, config=allowed),
        Attempt("containerd socket", {"volumes": ["/run/containerd/containerd.sock:/c"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("containerd via /var/run", {"volumes": ["/var/run/containerd:/c"]}, config={"allowed_host_paths": ["/var"]}),
        Attempt("docker exec root", {"volumes": ["/run/docker:/c"]}, config={"allowed_host_paths": ["/run"]}),
        Attempt("agent's config file", {"volumes": [f"{root}/agent.toml:/c"]}, config=allowed),
        Attempt("agent's token file", {"volumes": [f"{root}/token:/t"]}, config=allowed),
        Attempt("registry password file", {"volumes": [f"{root}/registry-pass:/p"]}, config=allowed),
        Attempt("agent's inbox", {"volumes": [f"{root}/inbox:/i"]}, config=allowed),
        Attempt("agent's TLS key", {"volumes": [f"{root}/tls/key.pem:/k"]}, config={**allowed, "tls": tls}),
        Attempt("agent's TLS key through a link", {"volumes": [f"{root}/tls-link/key.pem:/k"]}, config={**allowed, "tls": tls}),
        Attempt("agent's TLS folder", {"volumes": [f"{root}/tls:/t"]}, config={**allowed, "tls": {"cert_path": f"{root}/tls"}}),
        Attempt("inbox through a link", {"volumes": [f"{root}/inbox-link/new:/i"]}, config=allowed),
        # Class 5: limits that would turn into "no limit".
        Attempt("cpus rounding to zero", {"cpus": 1e-10}, config={"max_cpus": 2}),
        Attempt("cpus infinite", {"cpus": float("inf")}, config={"max_cpus": 2}),
        Attempt("cpus nan", {"cpus": float("nan")}, config={"max_cpus": 2}),
        Attempt("memory 400 digits", {"memory": "9" * 400}, config={"max_memory": "1g"}),
        Attempt("memory one byte", {"memory": 1}, config={"max_memory": "1g"}),
        Attempt("memory rounding to zero", {"memory": "0.1b"}, config={"max_memory": "1g"}),
        Attempt("shm over max memory", {"shm_size": "8g"}, config={"max_memory": "1g"}),
        Attempt("shm over own memory", {"memory": "64m", "shm_size": "1g"}, config={"max_memory": "1g"}),
        # Near-misses: spellings of network modes, configured networks, device permissions.
        Attempt("HOST network", {"network": "HOST"}),
        Attempt("Host network", {"network": "Host"}),
        Attempt("CONTAINER network", {"network": "CONTAINER:other"}),
        Attempt("host network by id", {"network": "28ec7caf3aab"}),
        Attempt("network not allowed", {"network": "other"}, config={"network": "flows"}),
        Attempt("network beside the allowed", {"network": "flows"}, config={"allowed_networks": ["etl"]}),
        Attempt("device rw over r", {"devices": ["/dev/null:/dev/null:rw"]}, config={"allowed_devices": ["/dev/null:/dev/null:r"]}),
        Attempt("device default rwm over r", {"devices": ["/dev/null"]}, config={"allowed_devices": ["/dev/null:/dev/null:r"]}),
        Attempt("registry with newline", {"image": "127.0.0.1:5000\n/x"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        # Found by attacking policy v2: undecodable names, tmpfs sizes, priority ulimits, system dirs, volume binds.
        Attempt("link to a name that is not UTF-8", {"volumes": [f"{root}/notutf8:/x"]}, config=allowed),
        Attempt("tmpfs size twice", {"tmpfs": {"/t": "size=1m,size=0"}}, config={"max_memory": "256m"}),
        Attempt("tmpfs nr_blocks", {"tmpfs": {"/t": "size=1m,nr_blocks=10000000"}}, config={"max_memory": "256m"}),
        Attempt("tmpfs no size", {"tmpfs": {"/t": "mode=1777"}}, config={"max_memory": "256m"}),
        Attempt("ulimit rtprio", {"ulimits": [{"name": "rtprio", "soft": 99, "hard": 99}]}),
        Attempt("ulimit memlock", {"ulimits": [{"name": "memlock", "soft": -1, "hard": -1}]}),
        Attempt("usr with / allowed", {"volumes": ["/usr:/u"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("dbus socket with / allowed", {"volumes": ["/run/dbus:/d"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("home with / allowed", {"volumes": ["/home:/h"]}, config={"allowed_host_paths": ["/"]}),
        Attempt("named volume binding /etc", {"volumes": ["etc-bind:/e"]}, config={"allow_named_volumes": True}),
        # Local-driver options other than a plain bind reach the host too (issue 27).
        Attempt("named volume rbind of /etc", {"volumes": ["etc-rbind:/e"]}, config={"allow_named_volumes": True}),
        Attempt("named volume bind spelled BIND", {"volumes": ["etc-bind-upper:/e"]}, config={"allow_named_volumes": True}),
        Attempt("named volume overlay of /etc", {"volumes": ["etc-overlay:/e"]}, config={"allow_named_volumes": True}),
        Attempt("named volume of a block device", {"volumes": ["disk-ext4:/e"]}, config={"allow_named_volumes": True}),
        Attempt("named volume of another driver", {"volumes": ["plugin-vol:/e"]}, config={"allow_named_volumes": True}),
        Attempt("image by short ID outside the list", {"image": "0123456789ab"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        Attempt("image by sha256 ID outside the list", {"image": "sha256:" + "0123456789ab" * 5 + "0123"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        Attempt("image by ID with no names", {"image": "abcdef012345"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        Attempt("registry port trick 2", {"image": "127.0.0.1:5000.evil.net/x"}, config={"registry_allow_list": ["127.0.0.1:5000"]}),
        # The same through Prefect job variables.
        Attempt("jv privileged", {"image": img, "privileged": True}, via="job-variables"),
        Attempt("jv caps", {"image": img, "cap_add": ["SYS_PTRACE"]}, via="job-variables"),
        Attempt("jv devices", {"image": img, "devices": ["/dev/kmsg"]}, via="job-variables"),
        Attempt("jv host network", {"image": img, "network_mode": "host"}, via="job-variables"),
        Attempt("jv network list host", {"image": img, "networks": ["host"]}, via="job-variables"),
        Attempt("jv socket", {"image": img, "volumes": ["/var/run/docker.sock:/s"]}, via="job-variables", config={"allowed_host_paths": ["/"]}),
        Attempt("jv symlink", {"image": img, "volumes": [f"{root}/sock:/s"]}, via="job-variables", config=allowed),
        Attempt("jv create kwargs", {"image": img, "container_create_kwargs": {"privileged": True}}, via="job-variables"),
        Attempt("jv create kwargs caps", {"image": img, "container_create_kwargs": {"cap_add": ["SYS_ADMIN"]}}, via="job-variables"),
        Attempt("jv create kwargs devices", {"image": img, "container_create_kwargs": {"devices": ["/dev/kmsg"]}}, via="job-variables"),
        Attempt("jv create kwargs pid", {"image": img, "container_create_kwargs": {"pid_mode": "host"}}, via="job-variables"),
        Attempt("jv create kwargs sysctls", {"image": img, "container_create_kwargs": {"sysctls": {"net.ipv4.ip_forward": "1"}}}, via="job-variables"),
        Attempt("jv create kwargs runtime", {"image": img, "container_create_kwargs": {"runtime": "runc-privileged"}}, via="job-variables"),
        Attempt("jv create kwargs volumes", {"image": img, "container_create_kwargs": {"volumes": ["/:/host"]}}, via="job-variables"),
        Attempt("jv networks list host second", {"image": img, "networks": ["flows", "host"]}, via="job-variables"),
        Attempt("jv memswap unlimited", {"image": img, "mem_limit": "64m", "memswap_limit": "-1"}, via="job-variables", config={"max_memory": "1g"}),
        Attempt("jv mem limit", {"image": img, "mem_limit": "64g"}, via="job-variables", config={"max_memory": "1g"}),
        Attempt("jv gpus", {"image": img, "gpus": 1}, via="job-variables"),
        Attempt("jv pid", {"image": img, "pid": "host"}, via="job-variables"),
        Attempt("jv HOST network mode", {"image": img, "network_mode": "HOST"}, via="job-variables"),
        Attempt("jv networks Host", {"image": img, "networks": ["Host"]}, via="job-variables"),
        Attempt("jv cpus rounding to zero", {"image": img, "cpus": 1e-10}, via="job-variables", config={"max_cpus": 2}),
        Attempt("jv mem limit 400 digits", {"image": img, "mem_limit": "9" * 400}, via="job-variables", config={"max_memory": "1g"}),
        Attempt("jv labels dagent.agent", {"image": img, "labels": {"dagent.agent": "other"}}, via="job-variables"),
        Attempt("jv labels dagent.keep", {"image": img, "labels": {"dagent.keep": "always"}}, via="job-variables"),
        Attempt("jv labels over configured", {"image": img, "labels": {"team": "evil"}}, via="job-variables", config={"labels": {"team": "data"}}),
    ]  # fmt: skip
    return [a if "image" in a.fields else replace(a, fields={"image": img, **a.fields}) for a in items]


# Things a run can set that must not change what the agent sets (identity, secrets).
SPOOFS: list[tuple[str, dict[str, Any]]] = [
    ("env run id", {"env": {"DAGENT_RUN_ID": "someone-else"}}),
    ("env flow run id", {"env": {"PREFECT__FLOW_RUN_ID": "someone-else"}}),
    ("env api key", {"env": {"PREFECT_API_KEY": "stolen"}}),
    ("labels agent", {"labels": {"dagent.agent": "other", "dagent.run-id": "other"}}),
]


@contextlib.contextmanager
def bypass_sandbox() -> Iterator[Path]:
    """An allowed host directory holding symlinks to forbidden places."""
    with tempfile.TemporaryDirectory(prefix="dagent-bypass-") as tmp:
        root = Path(tmp) / "allowed"
        root.mkdir()
        (root / "sock").symlink_to("/var/run/docker.sock")
        (root / "etc").symlink_to("/etc")
        (root / "rootfs").symlink_to("/")
        (root / "chain").symlink_to(root / "etc")
        (root / "disk").symlink_to("/dev/sda")
        (root / "loop").symlink_to(root / "loop")
        (root / "dangling").symlink_to("/etc/dagent-chaos-not-there")
        (root / "procself").symlink_to("/proc/self/root")
        (root / "file").write_text("")
        (root / "null").symlink_to("/dev/mem")
        (root / "ok").mkdir()
        (root / "user").mkdir()
        (root / "user" / "docker.sock").write_text("")
        (root / "docker-data" / "volumes").mkdir(parents=True)
        for name in ("agent.toml", "token", "registry-pass"):
            (root / name).write_text("chaos\n")
        (root / "token").chmod(0o600)
        (root / "inbox" / "new").mkdir(parents=True)
        (root / "inbox-link").symlink_to(root / "inbox")
        (root / "tls").mkdir()
        for name in ("ca.pem", "cert.pem", "key.pem"):
            (root / "tls" / name).write_text("chaos\n")
        (root / "tls-link").symlink_to(root / "tls")
        os.symlink(b"\xff", os.path.join(os.fsencode(root), b"notutf8"))
        os.symlink(b"/etc", os.path.join(os.fsencode(root), "\ufffd".encode()))
        (root / "chain0").mkdir()
        for i in range(1, 46):
            (root / f"chain{i}").symlink_to(root / f"chain{i - 1}")
        Path(f"{root}-evil").mkdir()
        yield root


def attempts(root: Path) -> list[Attempt]:
    """The policy-bypass corpus, for symlinks under `root` (see bypass_sandbox)."""
    return _attempts(root)


def _daemon(kind: str, root: Path) -> DaemonFacts:
    """The daemon an attempt meets: its socket and data root live in the sandbox, like a rootless one."""
    view = {
        "local": None,
        "remote": "the daemon at tcp://127.0.0.1:2376 may see another filesystem",
        "private": "the agent and the daemon are in different mount namespaces",
    }[kind]
    return DaemonFacts(
        data_root=str(root / "docker-data"), socket_path=str(root / "user" / "docker.sock"), view_error=view
    )


def _network_driver(name: str) -> str | None:
    # The daemon resolves an id prefix of its host network to the host driver.
    return "host" if "28ec7caf3aab".startswith(name.lower()) and len(name) >= 5 else "bridge"


# What the daemon holds, as the corpus's attempts find it.
_VOLUMES = {
    "etc-bind": VolumeFacts("local", {"type": "none", "o": "bind", "device": "/etc"}),
    "etc-rbind": VolumeFacts("local", {"type": "none", "o": "rbind", "device": "/etc"}),
    "etc-bind-upper": VolumeFacts("local", {"type": "none", "o": "BIND", "device": "/etc"}),
    "etc-overlay": VolumeFacts("local", {"type": "overlay", "o": "lowerdir=/etc,upperdir=/tmp/u,workdir=/tmp/w"}),
    "disk-ext4": VolumeFacts("local", {"type": "ext4", "device": "/dev/sda1"}),
    "plugin-vol": VolumeFacts("rexray/ebs", {}),
}
_IMAGE_NAMES = {
    "0123456789ab": ("127.0.0.1:6000/evil:1",),
    "sha256:" + "0123456789ab" * 5 + "0123": ("127.0.0.1:6000/evil:1",),
    "abcdef012345": (),
}


def try_bypass(attempt: Attempt, root: Path) -> str | None:
    """None when the attempt was refused; else what it got through (judged on docker-py's own request)."""
    auth = [{"registry": "127.0.0.1:5000", "username": "u", "password_file": str(root / "registry-pass")}]
    config = _agent_config(
        docker={"base_url": f"unix://{root}/user/docker.sock", "registry_auth": auth, **attempt.config},
        inbox={"path": str(root / "inbox")},
        api={"url": "http://127.0.0.1:9/api", "work_pool": "chaos", "token_file": str(root / "token")},
    )
    view = HostView(
        config, _daemon(attempt.daemon, root), [root / "agent.toml"], _network_driver,
        volume=_VOLUMES.get, image_names=_IMAGE_NAMES.get,
    )  # fmt: skip
    try:
        if attempt.via == "job-variables":
            source = PrefectSource(config)
            try:
                run = source.prepare.run_request("bypass-1", attempt.fields)
                origin = source.prepare.origin("bypass-1", FlowRunContext({}, None, None), attempt.fields)
            finally:
                source.close()
        else:
            run = parse_run({"id": "bypass-1", **attempt.fields}, "run.toml")
            origin = Origin("inbox")
        spec = build(config, run, origin, view.facts(run))
    except (PolicyError, RunFileError):
        return None
    except DagentError as e:
        return f"refused, but not as policy: {e}"
    granted = granted_beyond_defaults(config.docker, docker_request(spec.to_docker_kwargs()))
    return f"allowed: {', '.join(granted)}" if granted else None


def granted_beyond_defaults(docker: Any, body: dict[str, Any]) -> list[str]:
    """What a container made from docker-py's request body would get that the attempt must not.

    Every attempt asks for something the agent's defaults (plus the attempt's settings) forbid, so
    anything on this list is a bypass. A job variable dagent ignores is not one.
    """
    host = body.get("HostConfig") or {}
    labels = body.get("Labels") or {}
    mode = str(host.get("NetworkMode") or "")
    allowed_nets = docker.allowed_networks or ([docker.network] if docker.network else None)
    ref = parse_image(body["Image"])
    allow = docker.registry_allow_list
    memory = host.get("Memory")
    checks = (
        ("privileged", host.get("Privileged")),
        ("capabilities", host.get("CapAdd")),
        ("devices", host.get("Devices")),
        ("host namespaces", mode.lower() == "host" or mode.lower().startswith("container:") or mode.startswith("28ec7")
         or host.get("PidMode") == "host" or host.get("IpcMode") == "host"),
        ("a network not allowed", allowed_nets is not None and mode not in (*allowed_nets, "none", "")),
        ("gpus", host.get("DeviceRequests")),
        ("ports", host.get("PortBindings")),
        ("mounts", host.get("Binds") or host.get("Mounts")),
        ("a registry not allowed", allow is not None and ref.explicit_registry and ref.registry not in allow),
        ("no cpu limit", docker.max_cpus is not None and not host.get("NanoCpus")),
        ("cpus over the maximum", docker.max_cpus is not None and (host.get("NanoCpus") or 0) > docker.max_cpus * 1e9),
        ("no memory limit", docker.max_memory is not None and not memory),
        ("memory over the maximum", docker.max_memory is not None and (memory or 0) > docker.max_memory),
        ("shm over the memory limit", memory and (host.get("ShmSize") or 0) > memory),
        ("unlimited swap", docker.max_memory is not None and host.get("MemorySwap") == -1),
        ("a tmpfs beyond the memory limit", docker.max_memory is not None and host.get("Tmpfs")),
        ("a priority ulimit", any(u.get("Name") in ("rtprio", "rttime", "nice", "memlock") for u in host.get("Ulimits") or [])),
        ("the agent's labels", labels.get(LABEL_AGENT) != "chaos" or labels.get(LABEL_RUN_ID) != "bypass-1"
         or any(k.startswith("dagent.") and labels[k] != v for k, v in _AGENT_LABELS.items())
         or any(labels.get(k) != v for k, v in docker.labels.items())),
    )  # fmt: skip
    return [what for what, got in checks if got]


_AGENT_LABELS = {"dagent.keep": "on-failure"}


def try_spoof(name: str, fields: dict[str, Any]) -> str | None:
    """None when the agent's own env and labels survive what the run sets."""
    config = _agent_config()
    origin = Origin(
        "prefect",
        env={"PREFECT__FLOW_RUN_ID": "run-1"},
        secret_env={"PREFECT_API_KEY": SecretStr(SECRET)},
        labels=dict(fields.get("labels", {})),
    )
    run = parse_run({"id": "run-1", "image": "busybox", "env": fields.get("env", {})}, "run.toml")
    spec = build(config, run, origin)
    if spec.env.get("DAGENT_RUN_ID") != "run-1" or spec.env.get("PREFECT__FLOW_RUN_ID") != "run-1":
        return f"identity env overridden: {spec.env}"
    if spec.labels.get(LABEL_AGENT) != "chaos" or spec.labels.get(LABEL_RUN_ID) != "run-1":
        return f"identity labels overridden: {spec.labels}"
    if "PREFECT_API_KEY" in spec.env or spec.secret_env["PREFECT_API_KEY"].get_secret_value() != SECRET:
        return "the agent's API key was overridden"
    return None
