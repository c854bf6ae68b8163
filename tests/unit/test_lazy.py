"""dagent._lazy: a module a dependency imports but the agent never uses is loaded only when first used."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagent._lazy import defer


@pytest.fixture
def package(tmp_path: Path) -> Iterator[str]:
    """A package whose import is counted (in `builtins.loads`)."""
    name = f"lazy_probe_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        # As asyncio's does: a submodule's names by *, then the submodule itself by name.
        "import builtins\nbuiltins.loads = getattr(builtins, 'loads', 0) + 1\nVALUE = 42\n"
        "from .sub import *\nNAMES = sub.__all__\n"
    )
    (root / "sub.py").write_text(
        "import builtins\nbuiltins.subs = getattr(builtins, 'subs', 0) + 1\n__all__ = ['THING']\nTHING = 'sub'\n"
    )
    sys.path.insert(0, str(tmp_path))
    import builtins

    builtins.loads = builtins.subs = 0  # type: ignore[attr-defined]
    yield name
    sys.path.remove(str(tmp_path))
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
    del builtins.loads  # type: ignore[attr-defined]
    if hasattr(builtins, "subs"):
        del builtins.subs


def _loads() -> int:
    import builtins

    return int(builtins.loads)  # type: ignore[attr-defined]


def test_an_import_alone_does_not_load_it(package: str) -> None:
    defer(package)
    module = importlib.import_module(package)
    assert _loads() == 0 and type(module).__name__ == "_Deferred"
    assert module.VALUE == 42 and _loads() == 1  # the first read loads it, once
    assert module.VALUE == 42 and importlib.import_module(package).VALUE == 42 and _loads() == 1
    assert type(sys.modules[package]).__name__ == "module"  # the real one took its place


def test_a_submodule_import_loads_the_package_first_and_runs_once(package: str) -> None:
    """`import pkg.sub` loads the package as a plain import would, and its submodule is not run twice."""
    import builtins

    defer(package)
    sub = importlib.import_module(f"{package}.sub")
    assert sub.THING == "sub" and _loads() == 1 and builtins.subs == 1  # type: ignore[attr-defined]
    real = sys.modules[package]
    assert sys.modules[f"{package}.sub"] is sub and real.sub is sub and real.NAMES == ["THING"]
    scope: dict[str, object] = {}
    exec(f"from {package} import VALUE", scope)
    assert scope["VALUE"] == 42 and _loads() == 1 and builtins.subs == 1  # type: ignore[attr-defined]


def test_many_threads_reading_at_once_load_it_once(package: str) -> None:
    import threading

    defer(package)
    stand_in = importlib.import_module(package)
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(stand_in.VALUE)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [42] * 8 and _loads() == 1


def test_a_module_imported_already_or_missing_is_left_alone(package: str) -> None:
    real = importlib.import_module(package)
    defer(package)
    assert sys.modules[package] is real and _loads() == 1
    defer("no_such_module_anywhere")
    assert "no_such_module_anywhere" not in sys.modules
