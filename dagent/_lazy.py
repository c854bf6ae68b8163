"""Standard-library modules that a dependency imports at its top but an agent never uses, imported when
first used instead (see `defer`).

pydantic-settings imports asyncio at the top of its `main` module for its CLI's async commands, which
dagent never runs (about 1.4 MB of an idle agent's 45, measured with `dagent start` on the inbox), and
docker-py imports tarfile for image builds and archives, which dagent never makes (about 0.35 MB).
importlib's own LazyLoader cannot serve: on Python 3.11 `import asyncio` reads the module's `__spec__`,
which loads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module until an attribute of it is first read."""

    def __getattr__(self, name: str) -> Any:
        real = _load(self.__name__)
        self.__dict__.update(real.__dict__)  # later reads through this stand-in need no lookup
        return getattr(real, name)


def _load(name: str) -> types.ModuleType:
    if isinstance(sys.modules.get(name), _Deferred):
        del sys.modules[name]
    return importlib.import_module(name)


def defer(name: str) -> None:
    """Put a stand-in for the top-level module `name` in `sys.modules`, unless it is imported already.

    `import name` then binds the stand-in, and the first attribute read (`name.x`, `from name import x`,
    a submodule's import) imports the real module, which takes its place in `sys.modules`."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _Deferred(name)
    # The import system reads these on every `import name`; none of them may load the module.
    stand_in.__spec__ = spec
    stand_in.__loader__ = spec.loader
    stand_in.__file__ = spec.origin
    sys.modules[name] = stand_in
