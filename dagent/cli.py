"""Command line: argument parsing and exit codes only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

from dagent import __version__
from dagent.config import MASK
from dagent.errors import DagentError, InputError, PolicyError, one_line
from dagent.flags import WORKER_FLAGS, add_config_flags, cli_overrides, toml_value


class Exit(IntEnum):
    """Every exit code dagent gives but one: `dagent run` exits with its container's own code."""

    OK = 0
    ERROR = 1  # an error that is not bad input, an unhealthy `dagent health`, a bug of ours
    BAD_INPUT = 2  # a config, a run file or a flag that is wrong, a run the policy refuses
    INTERRUPTED = 130  # Ctrl-C, or `dagent run` stopped by a signal (as a shell reports SIGINT)


# The one place errors become exit codes; the first matching class wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InputError, Exit.BAD_INPUT),
    (PolicyError, Exit.BAD_INPUT),
    (DagentError, Exit.ERROR),
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
    from dagent.app import serve

    return serve(lambda: _load(args))


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
    from dagent.app import serve
    from dagent.config import load_config

    return serve(lambda: load_config(overrides, args.config))


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the ContainerSpec and docker-py kwargs a run file becomes; creates nothing."""
    from dagent.app import judge
    from dagent.runs import load_run_file

    loaded = _load(args)
    spec = judge(loaded, load_run_file(args.run_file))
    kwargs = spec.to_docker_kwargs()
    kwargs["environment"] = spec.model_dump(mode="json")["env"] | {k: MASK for k in spec.secret_env}
    print(json.dumps({"spec": spec.model_dump(mode="json"), "docker_kwargs": kwargs}, indent=2, default=list))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Apply one run file now, as the agent would, and exit with the container's exit code.

    Ctrl-C or SIGTERM stops the container (as `docker run` does) and reports the run cancelled.
    """
    from dagent.app import judge, run_one
    from dagent.runs import load_run_file

    # The outcome is this command's own last line; the agent's log says only what went wrong.
    logging.getLogger("dagent.agent").setLevel(logging.ERROR)
    loaded = _load(args)
    run = load_run_file(args.run_file)
    judge(loaded, run)  # a refusal is exit 2 before anything touches the daemon
    show = args.logs or loaded.config.show_flow_logs
    result = run_one(loaded, run, show)
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
        return Exit.INTERRUPTED
    return result.exit_code if result.exit_code is not None else Exit.ERROR


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
    return Exit.ERROR


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
    return Exit.ERROR


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
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`dagent config show | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return Exit.OK
    except Exception as e:  # a bug of ours: still one line, the traceback at debug level
        logging.getLogger("dagent").debug("internal error", exc_info=e)
        print(f"dagent: error: internal error: {type(e).__name__}: {one_line(e)} (a bug; "
              "DAGENT_LOG_LEVEL=debug shows where)", file=sys.stderr)  # fmt: skip
        return Exit.ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
