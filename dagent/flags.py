"""The command line's flags for configuration keys (every command that reads the configuration takes the
same ones), and configuration values written back as TOML (`config show`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from dagent.errors import InputError


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one configuration key."""

    flags: tuple[str, ...]
    key: str
    kind: str  # str, int, float, true, false, never, list, kv
    help: str
    metavar: str | None = None


# Every flag `start`, `config show` and `config validate` accept; seed flags keep their spelling.
CONFIG_FLAGS: tuple[Flag, ...] = (
    Flag(("--name", "-n"), "name", "str", "agent name"),
    Flag(("--label", "-l"), "labels", "list", "agent label (repeat)", "LABEL"),
    Flag(("--source",), "source", "str", "inbox or prefect"),
    Flag(("--max-polls",), "max_polls", "int", "stop after N polls", "N"),
    Flag(("--poll-interval",), "poll_interval", "float", "seconds between polls", "SECONDS"),
    Flag(("--concurrency",), "concurrency", "int", "most runs in flight", "N"),
    Flag(("--show-flow-logs",), "show_flow_logs", "true", "stream container output into the log"),
    Flag(("--log-format",), "log_format", "str", "text or json"),
    Flag(("--log-level",), "log_level", "str", "DEBUG, INFO, WARNING or ERROR"),
    Flag(("--api-url",), "api.url", "str", "Prefect API URL", "URL"),
    Flag(("--token", "-t"), "api.token", "str", "Prefect API key", "TOKEN"),
    Flag(("--token-file",), "api.token_file", "str", "file holding the API key", "PATH"),
    Flag(("--pool",), "api.work_pool", "str", "work pool name", "POOL"),
    Flag(("--work-queue", "-q"), "api.work_queues", "list", "work queue (repeat)", "QUEUE"),
    Flag(("--no-cloud-logs",), "api.send_agent_logs", "false", "do not send agent logs to the API"),
    Flag(("--base-url",), "docker.base_url", "str", "Docker daemon URL", "URL"),
    Flag(("--no-pull",), "docker.pull", "never", "never pull images"),
    Flag(("--volume", "-v"), "docker.volumes", "list", "SRC:DST[:ro|rw] for every container (repeat)", "VOLUME"),
    Flag(("--network",), "docker.network", "str", "Docker network for every container", "NETWORK"),
    Flag(("--env", "-e"), "docker.env", "kv", "KEY=VALUE for every container (repeat)", "KEY=VALUE"),
    Flag(("--agent-address",), "health.address", "str", "host:port for /health and /metrics", "HOST:PORT"),
    Flag(("--inbox",), "inbox.path", "str", "inbox directory", "PATH"),
)


# `dagent worker start`: the flags of `prefect worker start`, for teams switching from Prefect's worker.
WORKER_FLAGS: tuple[Flag, ...] = (
    Flag(("--pool", "-p"), "api.work_pool", "str", "work pool to serve", "POOL"),
    Flag(("--name", "-n"), "name", "str", "worker name"),
    Flag(("--limit", "-l"), "concurrency", "int", "most flow runs at once", "N"),
    Flag(("--work-queue", "-q"), "api.work_queues", "list", "work queue (repeat)", "QUEUE"),
    Flag(("--prefetch-seconds",), "api.prefetch", "float", "take runs scheduled this far ahead", "SECONDS"),
    Flag(("--base-job-template",), "api.base_job_template", "str", "JSON: the pool's template if created", "FILE"),
    Flag(("--log-level",), "log_level", "str", "DEBUG, INFO, WARNING or ERROR"),
)


def add_config_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...] = CONFIG_FLAGS) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="agent.toml to read (else $DAGENT_CONFIG, ./agent.toml)")
    group = parser.add_argument_group("configuration (override environment and file)")
    for flag in flags:
        common: dict[str, Any] = {"dest": flag.key, "default": argparse.SUPPRESS, "help": flag.help}
        if flag.kind in ("true", "false", "never"):
            const = {"true": True, "false": False, "never": "never"}[flag.kind]
            group.add_argument(*flag.flags, action="store_const", const=const, **common)
        elif flag.kind in ("list", "kv"):
            group.add_argument(*flag.flags, action="append", metavar=flag.metavar, **common)
        else:
            group.add_argument(*flag.flags, metavar=flag.metavar or flag.key.split(".")[-1].upper(), **common)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested config dict the given flags set (init kwargs, the highest source)."""
    given = vars(args)
    result: dict[str, Any] = {}
    for flag in getattr(args, "flags", CONFIG_FLAGS):
        if flag.key not in given:
            continue
        value = given[flag.key]
        if flag.kind == "kv":
            table = {}
            for item in value:
                key, sep, val = item.partition("=")
                if not sep:
                    raise InputError(f"command line: {flag.flags[0]} {item!r}: expected KEY=VALUE")
                table[key] = val
            value = table
        node = result
        *parents, last = flag.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return result


def toml_value(value: Any) -> str:
    """A JSON value as TOML, so `config show` output is itself a valid agent.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # TOML has no null: an unset key in a table is left out
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_str(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
