"""Shared fixtures: every test starts from a clean environment and an empty working directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_OWN_ENV = ("DAGENT_", "PREFECT_", "PREFECT__")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Clear DAGENT_*, PREFECT_* and DOCKER_HOST, and run in an empty directory (no ./agent.toml)."""
    for name in list(os.environ):
        if name.upper().startswith(_OWN_ENV) or name.upper() == "DOCKER_HOST":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def write_toml(tmp_path: Path) -> Callable[..., Path]:
    """Write TOML text to a file under tmp_path and return its path."""

    def write(text: str, name: str = "agent.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
