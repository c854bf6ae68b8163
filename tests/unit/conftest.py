"""tests/unit is hermetic and fast: no daemon, network, subprocess or root (those tests are in
tests/integration and tests/host), and no test may take more than UNIT_TIMEOUT seconds."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

UNIT_TIMEOUT = 30


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parts[-3:-1] == ("tests", "unit"):
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))


# Nothing written into the checkout: hypothesis keeps no example database, and what else it stores
# (its constants cache) goes to a directory of its own, not ./.hypothesis.
settings.register_profile("unit", database=None)
settings.load_profile("unit")
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="dagent-unit-hypothesis-"))
