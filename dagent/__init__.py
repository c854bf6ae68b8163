"""dagent: a declarative, config-driven Docker agent for Prefect 3 work pools and a local inbox."""

from dagent._lazy import defer

__version__ = "0.1.0"
__all__ = ["__version__"]

# Imported at the top of dependencies, used by no agent (see dagent/_lazy.py); before they import them.
defer("asyncio")  # pydantic-settings, for its CLI's async commands
defer("tarfile")  # docker-py, for image builds and archives
