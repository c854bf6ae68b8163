"""Command line: argument parsing and exit codes only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dagent import __version__
from dagent.config import MASK
from dagent.errors import ConfigError, DaemonError, DagentError, InputError, PolicyError, one_line
from dagent.flags import WORKER_FLAGS, add_config_flags, cli_overrides, toml_value
from dagent.naming import StableName

# The one place errors become exit codes; the first matching class wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InputError, 2),
    (PolicyError, 2),
    (DagentError, 1),
)


def _load(args: argparse.Namespace, config_file: str | None = None) -> Any:
    from dagent.config import load_config

    return load_config(cli_overrides(args), config_file or args.config)


# --- commands ----------------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    """Validate each file (or the default lookup) with env and flags applied as `start` would."""
    files: list[str | None] = list(args.files) or [None]
    errors: list[str] = []
    for file in files:
        try:
            loaded = _load(args, file)
        except InputError as e:
            errors.extend(e.lines)
            continue
        print(f"{loaded.path or 'defaults and environment'}: ok")
    if errors:
        raise InputError(errors)
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective configuration with each value's source; secrets masked."""
    document = _load(args).show()
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    for key, source in document["sources"].items():
        value: Any = document["config"]
        for part in key.split("."):
            value = value[part]
        if value is None:
            print(f"# {key} is unset  ({source})")
        else:
            print(f"{key} = {toml_value(value)}  # {source}")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    """Print the JSON schema of agent.toml."""
    from dagent.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """Run the agent until SIGINT/SIGTERM or max_polls."""
    return _start(lambda: _load(args))


def _start(load: Callable[[], Any]) -> int:
    """Run the agent until SIGINT/SIGTERM, a drain (SIGQUIT) or max_polls; `load()` reads the configuration
    (again at each SIGHUP)."""
    import signal

    from dagent import logs

    # Signals are taken from the start: before the agent exists a stop exits, a drain waits for it.
    early: list[str] = []
    agent: Any = None
    kinds: dict[int, str] = {signal.SIGQUIT: "drain", signal.SIGHUP: "reload"}

    def on_signal(signum: int, _frame: object) -> None:
        what = kinds.get(signum, "stop")
        if agent is not None:
            agent.on_signal(what)  # no lock, no logging here: the loop thread acts on it
        elif what == "stop":
            raise SystemExit(0)  # nothing claimed yet
        else:
            early.append(what)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    loaded, named = load(), StableName()
    logs.setup(loaded.config.log_format, loaded.config.log_level)
    config = named(loaded)
    # The source's first request (what a control plane sees of a starting agent) goes out before
    # the rest of the agent is even imported.
    source = make_source(config)
    try:
        source.connect()
    except BaseException:
        source.close()
        raise

    from dagent.agent import Agent
    from dagent.hostview import exposed_roots
    from dagent.metrics import null_metrics, prometheus_metrics
    from dagent.runtime import DockerRuntime

    for root in exposed_roots(config):
        logging.getLogger("dagent").warning(
            "docker.allowed_host_paths: %s is on a mount without nosuid,nodev: a run (root in its container "
            "by default) can leave set-uid files or device nodes there for this host's users", root)  # fmt: skip
    runtime = DockerRuntime(config)
    # health.address waits for a restart, so an agent without the endpoint never needs Prometheus.
    metrics = prometheus_metrics() if config.health.address else null_metrics()
    made = Agent(config, source, runtime, metrics, host_view(config, runtime, loaded.path))
    made.reloader = lambda: named(load())
    if "drain" in early:
        made.drain()
    agent = made
    health = None
    if config.health.address:
        from dagent.health import HealthServer

        try:
            health = HealthServer(config.health.address, agent.health, agent.metrics)
        except OSError as e:
            raise ConfigError(f"health.address {config.health.address}: cannot listen: {e.strerror}") from None
        health.start()
    try:
        agent.run(connect=False)
    finally:
        if health is not None:
            health.stop()
        agent.source.close()
        runtime.close()
    return 0


def cmd_worker_start(args: argparse.Namespace) -> int:
    """`prefect worker start --type docker`, served by dagent: Prefect's flags, a Prefect source."""
    if args.type != "docker":
        raise InputError(f"command line: --type {args.type!r}: dagent is a worker of docker pools only")
    overrides = cli_overrides(args)
    overrides["source"] = "prefect"
    if args.run_once:
        overrides["max_polls"] = 1
    if args.with_healthcheck:
        host = os.environ.get("PREFECT_WORKER_WEBSERVER_HOST") or "127.0.0.1"
        port = os.environ.get("PREFECT_WORKER_WEBSERVER_PORT") or "8080"
        overrides.setdefault("health", {})["address"] = f"{host}:{port}"
    from dagent.config import load_config

    return _start(lambda: load_config(overrides, args.config))


def make_source(config: Any) -> Any:
    """The Source the configuration names."""
    if config.source == "inbox":
        from dagent.sources.inbox import InboxSource

        return InboxSource(config)
    from dagent.sources.prefect import PrefectSource

    return PrefectSource(config)


def host_view(config: Any, runtime: Any, config_file: Any) -> Any:
    """The HostView runs are judged by: the daemon's facts, and the agent's own files protected."""
    from dagent.config import ENV_CONFIG
    from dagent.hostview import HostView

    own = [p for p in (config_file, os.environ.get(ENV_CONFIG)) if p]
    return HostView.of(config, runtime, own)


def _judge(loaded: Any, run: Any) -> Any:
    """The run's ContainerSpec as the agent would judge it now; with no daemon, by Docker's defaults."""
    from dagent.contracts import DaemonFacts
    from dagent.hostview import HostView, socket_path, view_error
    from dagent.runtime import DockerRuntime
    from dagent.spec import build

    config = loaded.config
    view = host_view(config, DockerRuntime(config), loaded.path)
    try:
        facts = view.facts(run)
    except DaemonError as e:
        logging.getLogger("dagent").warning("the daemon was not asked (%s); judging by Docker's defaults", e)
        base_url = config.docker.base_url
        daemon = DaemonFacts(None, socket_path(base_url), view_error(base_url, config.docker.verify_host_view))
        facts = HostView(config, daemon, own_files=view.own_files).facts(run)
    return build(config, run, facts=facts)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the ContainerSpec and docker-py kwargs a run file becomes; creates nothing."""
    from dagent.runs import load_run_file

    loaded = _load(args)
    spec = _judge(loaded, load_run_file(args.run_file))
    kwargs = spec.to_docker_kwargs()
    kwargs["environment"] = spec.model_dump(mode="json")["env"] | {k: MASK for k in spec.secret_env}
    print(json.dumps({"spec": spec.model_dump(mode="json"), "docker_kwargs": kwargs}, indent=2, default=list))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Apply one run file now, as the agent would, and exit with the container's exit code.

    Ctrl-C or SIGTERM stops the container (as `docker run` does) and reports the run cancelled.
    """
    import signal

    from dagent.agent import Agent
    from dagent.runs import load_run_file
    from dagent.runtime import DockerRuntime
    from dagent.sources.oneshot import OneShotSource

    # The outcome is this command's own last line; the agent's log says only what went wrong.
    logging.getLogger("dagent.agent").setLevel(logging.ERROR)
    loaded = _load(args)
    run = load_run_file(args.run_file)
    _judge(loaded, run)  # a refusal is exit 2 before anything touches the daemon
    show = args.logs or loaded.config.show_flow_logs
    config = loaded.config.model_copy(update={"max_polls": 1, "concurrency": 1, "show_flow_logs": show})
    source = OneShotSource(run)
    runtime = DockerRuntime(config)
    agent = Agent(config, source, runtime, host=host_view(config, runtime, loaded.path),
                  flow_output=lambda _run_id, line: print(line, flush=True))  # fmt: skip

    def on_signal(signum: int, _frame: object) -> None:
        print(f"dagent: {signal.Signals(signum).name}: stopping the run", file=sys.stderr)
        source.cancel()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        agent.run(reconcile=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        runtime.close()
    if source.refused is not None:
        raise PolicyError(source.refused.splitlines())
    result = source.result
    if result is None:
        raise DaemonError(f"run {source.run.id}: could not be finished (see the lines above)")
    container = (result.container_id or "")[:12]
    said = [e for e in (result.error, result.why) if e and e != f"exited with code {result.exit_code}"]
    detail = f" ({'; '.join(said)})" if said else ""
    if result.tail and not show:  # its output was not shown as it ran: the end of it, with the error
        print(f"run {result.run_id}: the container's last output:", *result.tail, sep="\n  ", file=sys.stderr)
    print(
        f"run {result.run_id}: {result.outcome}, exit code {result.exit_code}, container {container}{detail}",
        file=sys.stderr,
    )
    if result.outcome == "cancelled":
        return 130
    return result.exit_code if result.exit_code is not None else 1


def cmd_ps(args: argparse.Namespace) -> int:
    """List this agent's containers."""
    from dagent.runtime import DockerRuntime

    config = _load(args).config
    infos = DockerRuntime(config).managed(None if args.all else config.name)
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    print(f"{'RUN ID':<28} {'CONTAINER':<13} {'IMAGE':<32} {'STATE':<10} {'EXIT':<5} CREATED")
    for i in infos:
        exit_code = "" if i.exit_code is None else str(i.exit_code)
        print(f"{i.run_id:<28} {i.id[:12]:<13} {i.image:<32} {i.state:<10} {exit_code:<5} {i.created_at[:19]}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove this agent's finished containers older than --older-than."""
    from dagent.runtime import DockerRuntime

    config = _load(args).config
    removed = list(DockerRuntime(config).gc(config.name, parse_duration(args.older_than)))
    for info in removed:
        print(f"removed {info.name} ({info.state}, exit code {info.exit_code})")
    print(f"{len(removed)} container(s) removed", file=sys.stderr)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Ask the running agent's /health (a container's HEALTHCHECK); healthy when the endpoint is not enabled."""
    import urllib.error
    import urllib.request

    address = _load(args).config.health.address
    if address is None:
        print("health endpoint not enabled (health.address): nothing to check", file=sys.stderr)
        return 0
    host, _, port = address.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "", "[::]") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as answer:
            print(answer.read().decode(errors="replace").strip())
            return 0
    except urllib.error.HTTPError as e:
        print(f"unhealthy: {e.read().decode(errors='replace').strip()}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"unhealthy: cannot reach {address} (health.address): {getattr(e, 'reason', e)}", file=sys.stderr)
    return 1


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `1h`, `2d`."""
    from dagent.units import parse_duration as seconds

    try:
        return seconds(text, zero=True)  # --older-than 0: every finished container
    except ValueError:
        raise InputError(f"command line: --older-than {text!r}: expected a duration such as 30m, 1h or 2d") from None


# --- parser and main ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dagent`."""
    parser = argparse.ArgumentParser(prog="dagent", description="Run flow runs as Docker containers.")
    parser.add_argument("--version", action="version", version=f"dagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser("start", help="run the agent until SIGINT/SIGTERM or max_polls")
    add_config_flags(start)
    start.set_defaults(func=cmd_start)

    worker = commands.add_parser("worker", help="Prefect's `worker start` command line, served by dagent")
    worker_commands = worker.add_subparsers(dest="worker_command", required=True, metavar="COMMAND")
    worker_start = worker_commands.add_parser("start", help="as `prefect worker start --type docker`")
    add_config_flags(worker_start, WORKER_FLAGS)
    worker_start.add_argument("--type", "-t", default="docker", help="worker type: docker (the only one)")
    worker_start.add_argument("--run-once", action="store_true", help="take the runs there are once, then exit")
    worker_start.add_argument("--with-healthcheck", action="store_true",
                              help="serve /health on PREFECT_WORKER_WEBSERVER_HOST:PORT (127.0.0.1:8080)")  # fmt: skip
    worker_start.set_defaults(func=cmd_worker_start, flags=WORKER_FLAGS)

    config = commands.add_parser("config", help="validate, show or describe the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    validate = config_commands.add_parser("validate", help="would this agent start? exit 0 or 2")
    validate.add_argument("files", nargs="*", metavar="FILE")
    add_config_flags(validate)
    validate.set_defaults(func=cmd_config_validate)
    show = config_commands.add_parser("show", help="effective configuration and where each value came from")
    show.add_argument("--json", action="store_true", help='print {"config": ..., "sources": ...}')
    add_config_flags(show)
    show.set_defaults(func=cmd_config_show)
    schema = config_commands.add_parser("schema", help="print the JSON schema of agent.toml")
    schema.set_defaults(func=cmd_config_schema)

    plan = commands.add_parser("plan", help="print the ContainerSpec a run file becomes; creates nothing")
    plan.add_argument("run_file", metavar="RUN.toml")
    add_config_flags(plan)
    plan.set_defaults(func=cmd_plan)
    run = commands.add_parser("run", help="apply one run file now; exit with the container's exit code")
    run.add_argument("run_file", metavar="RUN.toml")
    run.add_argument("--logs", action="store_true", help="stream the container's output (also show_flow_logs)")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)
    ps = commands.add_parser("ps", help="list containers this agent manages")
    ps.add_argument("--all", action="store_true", help="containers of every dagent agent, not only this one")
    ps.add_argument("--json", action="store_true", help="print JSON")
    add_config_flags(ps)
    ps.set_defaults(func=cmd_ps)
    health = commands.add_parser("health", help="ask the running agent's /health; exit 0 healthy, 1 not")
    add_config_flags(health)
    health.set_defaults(func=cmd_health)
    gc = commands.add_parser("gc", help="remove this agent's finished containers past retention")
    gc.add_argument("--older-than", default="1h", metavar="AGE", help="finished at least this long ago (default 1h)")
    add_config_flags(gc)
    gc.set_defaults(func=cmd_gc)
    return parser


def exit_code(error: BaseException) -> int:
    """The exit code for an error (EXIT_CODES)."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dagent` command."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="dagent: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DagentError as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            print(f"dagent: error: {line}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`dagent config show | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except Exception as e:  # a bug of ours: still one line, the traceback at debug level
        logging.getLogger("dagent").debug("internal error", exc_info=e)
        print(f"dagent: error: internal error: {type(e).__name__}: {one_line(e)} (a bug; "
              "DAGENT_LOG_LEVEL=debug shows where)", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
