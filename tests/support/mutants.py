"""Mutants: dagent broken on purpose, one way each, to prove that a suite's checks can fail.

A mutant is one exact replacement in one file of the `dagent` package. `apply` copies the package
into a directory of its own and breaks the copy there, so the checkout is never changed; a suite runs
dagent with that directory first on PYTHONPATH and must go red. A mutant whose line is no longer in
the code is reported as stale instead of passing quietly. The conformance suite uses this harness
(`python -m tests.conformance --mutants`); the chaos suite is to use the same one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO


class StaleMutant(Exception):
    """The line a mutant breaks is no longer in the code (exactly once)."""


@dataclass(frozen=True)
class Mutant:
    """One way to break dagent: `old` (found exactly once in dagent/`path`) becomes `new`."""

    name: str
    path: str
    old: str
    new: str
    catchers: tuple[str, ...]  # what in the suite should go red under it (cases, rows), tried in order

    def apply(self, into: Path) -> Path:
        """A copy of the package with this mutant in it, under `into`; the directory to put on PYTHONPATH."""
        root = into / self.name.replace(" ", "-").replace("/", "-")
        shutil.copytree(REPO / "dagent", root / "dagent", ignore=shutil.ignore_patterns("__pycache__"))
        target = root / "dagent" / self.path
        text = target.read_text()
        if text.count(self.old) != 1:
            raise StaleMutant(f"{self.name}: dagent/{self.path} holds {text.count(self.old)} copies of its line, not 1")
        target.write_text(text.replace(self.old, self.new))
        return root
