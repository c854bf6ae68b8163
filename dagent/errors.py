"""The one exception tree of dagent; only the CLI turns these into exit codes."""

from __future__ import annotations

from collections.abc import Iterable


def one_line(error: BaseException | str | None, limit: int = 300) -> str:
    """The first line of an error's message (its class name when it has none), at most `limit` characters.

    Every log line, report and CRASHED message about an error is made by this, so none spans lines.
    """
    text = error if isinstance(error, str) else str(error) if error is not None else ""
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else type(error).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


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


class SourceUnavailable(SourceError):
    """The control plane did not answer, or said the agent itself is at fault (401, 408, 429, 5xx).

    A failure of the agent's, never of one run's: it leaves runs as they are and backs the agent off,
    where any other error met while preparing a run ends that run.
    """


class DaemonError(DagentError):
    """The Docker daemon is unreachable or refused an operation."""
