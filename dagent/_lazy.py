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
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

_lock = threading.RLock()  # one first load at a time, whichever thread reads first


class _Deferred(types.ModuleType):
    """Stands in `sys.modules` for a module until an attribute of it is first read; then every read is the
    real module's (never a stale copy)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_load(self), name)


def _load(stand_in: _Deferred) -> types.ModuleType:
    name = stand_in.__name__
    with _lock:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        # Submodules imported through the stand-in (its __path__ is the package's) are the real
        # package's: bound on it, as the import system binds a submodule on its parent.
        prefix = name + "."
        for full, module in list(sys.modules.items()):
            child = full[len(prefix) :]
            if full.startswith(prefix) and "." not in child and module is not None and not hasattr(real, child):
                setattr(real, child, module)
        return real


class _AlreadyLoaded(importlib.abc.Loader):
    """Hands the import system a submodule the package's own body imported already, so it runs once."""

    def __init__(self, module: types.ModuleType, spec: importlib.machinery.ModuleSpec | None) -> None:
        self.module = module
        self.spec = spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec  # module_from_spec put ours there


class _Finder(importlib.abc.MetaPathFinder):
    """`import pkg.sub` of a deferred package: the package is loaded first, as a plain import would have."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        stand_in = sys.modules.get(top)
        if fullname == top or not isinstance(stand_in, _Deferred):
            return None
        _load(stand_in)
        module = sys.modules.get(fullname)
        if module is None:
            return None  # not one the package imports itself: found as usual, once
        # The import system takes the spec of a module already in sys.modules over the one returned
        # here, and runs it again: so the module carries this one until its loader puts its own back.
        spec = importlib.util.spec_from_loader(fullname, _AlreadyLoaded(module, module.__spec__))
        module.__spec__ = spec
        return spec


def defer(name: str) -> None:
    """Put a stand-in for the top-level module `name` in `sys.modules`, unless it is imported already.

    `import name` then binds the stand-in, and the first attribute read (`name.x`, `from name import x`)
    or submodule import (`import name.sub`) imports the real module, which takes its place in
    `sys.modules`; each submodule still runs once."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _Deferred(name)
    # The import system reads these on every `import name` (and `__path__` on a submodule's import);
    # none of them may load the module.
    stand_in.__spec__ = spec
    stand_in.__loader__ = spec.loader
    stand_in.__file__ = spec.origin
    if spec.submodule_search_locations is not None:
        stand_in.__path__ = list(spec.submodule_search_locations)
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    sys.modules[name] = stand_in
