"""The chaos suite's corpora in the unit suite: every bad input gets one clear line and exit 2; no bypass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import corpus


def test_the_bad_input_corpus_is_big_enough() -> None:
    assert len(corpus.BAD_INPUTS) >= 100


@pytest.mark.parametrize("case", corpus.BAD_INPUTS, ids=lambda c: f"{c.kind}: {c.name}")
def test_bad_input(case: corpus.Case) -> None:
    assert corpus.judge(case) is None


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Path]:
    with corpus.bypass_sandbox() as root:
        yield root


def test_no_policy_bypass(sandbox: Path) -> None:
    got_through = {a.name: why for a in corpus.attempts(sandbox) if (why := corpus.try_bypass(a, sandbox)) is not None}
    assert got_through == {}


@pytest.mark.parametrize(("name", "fields"), corpus.SPOOFS, ids=[s[0] for s in corpus.SPOOFS])
def test_a_run_cannot_spoof_identity(name: str, fields: dict[str, object]) -> None:
    assert corpus.try_spoof(name, fields) is None
