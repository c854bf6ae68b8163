"""Every mutant of the chaos and conformance suites still finds its line in dagent (exactly once).

A stale mutant is reported by the suites, but only when they run: hours later, on a machine with
Docker and Prefect. This catches it at the change that made it stale."""

from __future__ import annotations

import pytest

from tests.chaos.mutants import MUTANTS as CHAOS
from tests.conformance.mutants import MUTANTS as CONFORMANCE
from tests.support import REPO
from tests.support.mutants import Mutant


@pytest.mark.parametrize("mutant", [*CHAOS, *CONFORMANCE], ids=lambda m: m.name)
def test_the_mutant_finds_its_line_once(mutant: Mutant) -> None:
    text = (REPO / "dagent" / mutant.path).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: dagent/{mutant.path} holds {text.count(mutant.old)} copies"
