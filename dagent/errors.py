"""The one exception tree of dagent; only the CLI turns these into exit codes."""

from __future__ import annotations

from collections.abc import Iterable


class DagentError(Exception):
    """Base of every error dagent raises on purpose."""


class InputError(DagentError):
    """Bad input from a user: a config, an environment value, a flag or a run file.

    It carries one line per problem, each naming where the value came from and its key path.
    """

    def __init__(self, lines: str | Iterable[str]) -> None:
        self.lines: tuple[str, ...] = (lines,) if isinstance(lines, str) else tuple(lines)
        super().__init__("\n".join(self.lines))


class ConfigError(InputError):
    """The agent's configuration (file, environment or flags) is invalid."""


class RunFileError(InputError):
    """A run file is invalid."""


class PolicyError(InputError):
    """A run asks for something the agent's policy does not allow; one line per refusal."""


class SourceError(DagentError):
    """The control plane (Prefect API or inbox directory) failed or answered nonsense."""


class DaemonError(DagentError):
    """The Docker daemon is unreachable or refused an operation."""
