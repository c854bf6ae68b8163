"""The tests' own layout: what test modules and bench/ may import of tests/ (tests/support only)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name == "tests" or name.startswith("tests.")]


# Data, not tests: the suites' mutant lists, which a unit test checks are still current.
DATA = ("tests.chaos.mutants", "tests.conformance.mutants")


def _allowed(path: Path) -> tuple[str, ...]:
    """A module of a suite package (tests/chaos, tests/conformance) may import its own package too."""
    parts = path.relative_to(REPO).parts
    own = f"tests.{parts[1]}" if parts[0] == "tests" and parts[1] in ("chaos", "conformance") else None
    return ("tests.support", *DATA) + ((own,) if own else ())


def test_no_test_module_imports_another_and_bench_imports_only_tests_support() -> None:
    wrong = []
    for path in sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").glob("*.py")]):
        if "support" in path.relative_to(REPO).parts:
            continue
        allowed = _allowed(path)
        for name in _imports(path):
            if not any(name == a or name.startswith(a + ".") for a in allowed):
                wrong.append(f"{path.relative_to(REPO)}: imports {name}")
    assert not wrong, "\n".join(wrong)
